"""`carnet replay --at POSITION|TIME`: an aggregate, or one read model, as it stood then.

- `--aggregate ID` prints the aggregate's state as of that point, as JSON:
  its events at or before the position, folded.
- `--read-model NAME` rebuilds that read model into a scratch schema as it
  stood when its checkpoint was at that event, prints the
  schema's name and its row counts, then either prints one table's rows as
  JSON lines (`--dump TABLE`) or keeps the schema for `--keep SECONDS` (or
  until Ctrl-C) for queries of your own; then drops it.

POSITION is a log position (an access entry's `as_of`); TIME is an RFC 3339
instant and means the last event recorded at or before it. Exit status: 0
done, 1 nothing there at that point, 2 bad input.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec

from infra.deadlines import bounded
from infra.decoder import Decoder
from infra.eventstore import EventStore
from infra.scratch import Scratch, rows, scratch_model
from projections import Projection, all_projections

LOOKUP_SECONDS = 120.0  # finding the event of a time scans the log
_Instant = Annotated[datetime, msgspec.Meta(tz=True)]
_json = msgspec.json.Encoder()


class BadInput(Exception):
    """The arguments name nothing that can be replayed (exit status 2)."""


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "replay",
        help="an aggregate or a read model as it stood at a past point of the log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--at", required=True, metavar="POSITION|TIME")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--aggregate", metavar="ID", help="an aggregate's id")
    what.add_argument(
        "--read-model", metavar="NAME", help=", ".join(p.name for p in all_projections())
    )
    then = parser.add_mutually_exclusive_group()
    then.add_argument("--dump", metavar="TABLE", help="print this table's rows as JSON lines")
    then.add_argument(
        "--keep", type=float, metavar="SECONDS", help="keep the schema this long (default: Ctrl-C)"
    )


def _say(message: str) -> None:
    print(f"carnet replay: {message}", file=sys.stderr, flush=True)


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    try:
        if args.aggregate is not None:
            return await _aggregate(pool, _uuid(args.aggregate), args.at)
        return await _read_model(pool, _projection(args.read_model), args)
    except BadInput as e:
        _say(str(e))
        return 2


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise BadInput(f"--aggregate: {text!r} is not a uuid") from None


def _projection(name: str) -> Projection:
    found = {p.name: p for p in all_projections()}
    if name not in found:
        raise BadInput(f"--read-model: no read model {name!r} (one of: {', '.join(found)})")
    return found[name]


async def _position(store: EventStore, at: str) -> int | None:
    """The position `--at` names; None for a time before the first event."""
    if at.isdigit():
        position = int(at)
        if position < 1 or position >= 2**63:
            raise BadInput(f"--at: position {at} is out of range")
        head = await bounded(store.last_position(), LOOKUP_SECONDS)
        if position > head:
            # The log has not got there: "then" would be "now", labelled a future point.
            raise BadInput(f"--at: position {at} is past the log's head ({head})")
        return position
    try:
        when = msgspec.convert(at, _Instant)
    except msgspec.ValidationError as e:
        raise BadInput(f"--at: {at!r} is neither a position nor an RFC 3339 time ({e})") from None
    return await bounded(store.position_at(when), LOOKUP_SECONDS)


def _state(aggregate: Any) -> dict[str, Any]:
    """An aggregate's attributes, its library ones (`_id`, `_version`…) by their public names."""
    state: dict[str, Any] = {
        "created_on": aggregate.created_on,
        "modified_on": aggregate.modified_on,
    }
    state.update({k: v for k, v in vars(aggregate).items() if not k.startswith("_")})
    return state


async def _aggregate(pool: asyncpg.Pool, aggregate_id: UUID, at: str) -> int:
    store = EventStore(pool)
    position = await _position(store, at)
    if position is None:
        _say(f"no event was recorded at or before {at}")
        return 1
    recorded = await bounded(store.read_aggregate_until(aggregate_id, position), LOOKUP_SECONDS)
    if not recorded:
        _say(f"aggregate {aggregate_id} had no event at or before position {position}")
        return 1
    decoder, aggregate = Decoder(), None
    for r in recorded:
        aggregate = decoder.decode(r).mutate(aggregate)
    out = {
        "id": str(aggregate_id),
        "type": type(aggregate).__qualname__,
        "at": position,
        "version": recorded[-1].originator_version,
        "position": recorded[-1].position,  # of its last event at that point
        "recorded_at": recorded[-1].recorded_at,
        "state": _state(aggregate),
    }
    builtins = msgspec.to_builtins(out, str_keys=True, enc_hook=str)
    print(_json.encode(builtins).decode(), flush=True)
    return 0


def _progress(applied: int) -> None:
    if sys.stderr.isatty():  # on a terminal only: piped, a run stays quiet
        print(f"\r  {applied:,} events read", end="", file=sys.stderr, flush=True)


def _summary(scratch: Scratch) -> str:
    if sys.stderr.isatty():
        print(file=sys.stderr)
    until = scratch.until
    lines = [
        f"{scratch.projection.name} as of position {until.position} (tx {until.tx}): "
        f"{scratch.applied} events read into schema {scratch.schema}"
    ]
    lines += [f"  {scratch.table(t)}: {n} rows" for t, n in scratch.counts.items()]
    return "\n".join(lines)


async def _read_model(pool: asyncpg.Pool, projection: Projection, args: argparse.Namespace) -> int:
    if args.dump is not None and args.dump not in projection.tables:
        tables = ", ".join(projection.tables)
        raise BadInput(f"--dump: {projection.name} has no table {args.dump!r} (one of: {tables})")
    if args.keep is not None and not 0 <= args.keep <= 7 * 86400:
        raise BadInput("--keep: 0 to 604800 seconds")
    store = EventStore(pool)
    position = await _position(store, args.at)
    until = None if position is None else await bounded(store.checkpoint_at(position), 30.0)
    if until is None:
        _say(f"the log has no event at or before {args.at}")
        return 1
    task, interrupted = asyncio.current_task(), asyncio.Event()
    assert task is not None
    built = False
    try:
        async with (
            _on_signals(interrupted, task),
            scratch_model(pool, projection, until, _progress) as scratch,
        ):
            built, summary = True, _summary(scratch)
            if args.dump is not None:
                print(summary, file=sys.stderr, flush=True)  # stdout holds only the rows
                await _dump(pool, scratch, args.dump)
                return 0
            print(summary, flush=True)
            keep = "until Ctrl-C" if args.keep is None else f"for {args.keep:g} s (Ctrl-C: now)"
            print(f"kept {keep}, then dropped", flush=True)
            await asyncio.sleep(args.keep if args.keep is not None else 10**9)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
        task.uncancel()
        if not built:
            _say("interrupted; the scratch schema was dropped")
            return 130
    print(f"dropped schema {scratch.schema}", flush=True)
    return 0


async def _dump(pool: asyncpg.Pool, scratch: Scratch, table: str) -> None:
    try:
        async for line in rows(pool, scratch, table):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@contextlib.asynccontextmanager
async def _on_signals(interrupted: asyncio.Event, task: "asyncio.Task[Any]") -> AsyncIterator[None]:
    """Ctrl-C or SIGTERM ends the wait (or the build), and the schema is still dropped."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        interrupted.set()
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
