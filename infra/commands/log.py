"""`carnet log`: the access ledger's entries as JSON lines, filtered like `GET /ledger`.

One entry per line, `{"sequence": …, …}` in the shape of `GET /ledger`'s
entries, oldest first. Every filter flag may be repeated (any of its values
matches); different flags combine with AND; `--not-…` flags exclude. The
entries are found through the access index, which the command first brings
up to the log's head itself, then read from the log (the ledger is the
evidence).

Exit status: 0 done; 1 the index cannot catch up (stopped on an error) or
an entry cannot be decoded; 2 a bad flag.
"""

import argparse
import contextlib
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, get_args

import asyncpg
import msgspec

from domain.ledger import Action, Outcome
from infra.access_index import IndexBehind, catch_up_index, iter_ledger
from infra.http.ledger_routes import entry_out
from infra.http.schemas import ONE_LINE
from infra.ledger import UnreadableEntry
from services.ports import LedgerQuery

# flag -> LedgerQuery set; each also has a `--not-` flag.
WHO = {
    "actor": "actor_ids",
    "token": "token_ids",
    "integration": "integration_ids",
    "client-ip": "client_ips",
    "user-agent": "user_agents",
}
WHAT = {
    "patient": "patient_ids",
    "record": "record_ids",
    "practitioner": "practitioner_ids",
    "establishment": "establishment_ids",
    "resource-type": "resource_types",
}
_ONE_LINE = re.compile(ONE_LINE)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def text(value: str) -> str:
    """A filter value as the edge would take it: one line, printable, at most 200, NFC."""
    if not value or len(value) > 200 or not _ONE_LINE.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: 1 to 200 characters, no control characters or undecodable bytes"
        )
    return unicodedata.normalize("NFC", value)


def instant(end: bool) -> Callable[[str], datetime]:
    """RFC 3339 with an offset, or a date: that day in UTC (`--to` includes all of it)."""

    def parse(value: str) -> datetime:
        try:
            if _DATE.fullmatch(value):
                day = date.fromisoformat(value)
                return datetime.combine(day + timedelta(days=end), time(), tzinfo=UTC)
            found = datetime.fromisoformat(value)
        except ValueError:
            found = None
        if found is None or found.utcoffset() is None:
            raise argparse.ArgumentTypeError(
                f"{value!r}: an RFC 3339 time with an offset (2026-12-01T08:00:00Z) or a date"
            )
        return found

    return parse


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The selector flags of `carnet log` (and `carnet scope`)."""
    for flag in WHO:
        parser.add_argument(f"--{flag}", action="append", default=[], type=text)
        parser.add_argument(
            f"--not-{flag}", action="append", default=[], type=text, help="exclude this"
        )
    for flag in WHAT:
        parser.add_argument(f"--{flag}", action="append", default=[], type=text)
    parser.add_argument("--outcome", action="append", default=[], choices=get_args(Outcome))
    parser.add_argument("--action", action="append", default=[], choices=get_args(Action))
    parser.add_argument(
        "--from", dest="since", type=instant(end=False), help="at or after (time or date)"
    )
    parser.add_argument(
        "--to", dest="until", type=instant(end=True), help="before (a date: through that day)"
    )


def query_of(args: argparse.Namespace) -> LedgerQuery:
    """The flags as a LedgerQuery; ValueError if the window is empty."""
    if args.since and args.until and args.until <= args.since:
        raise ValueError("--to must be after --from")
    sets: dict[str, Any] = {
        name: frozenset(getattr(args, flag.replace("-", "_")))
        for flag, name in {**WHO, **WHAT}.items()
    }
    sets |= {
        f"not_{name}": frozenset(getattr(args, f"not_{flag.replace('-', '_')}"))
        for flag, name in WHO.items()
    }
    return LedgerQuery(
        **sets,
        outcomes=frozenset(args.outcome),
        actions=frozenset(args.action),
        since=args.since,
        until=args.until,
        after=getattr(args, "after", 0),
    )


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "log",
        help="stream access-ledger entries as JSON lines, filtered",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filters(parser)
    parser.add_argument("--after", type=int, default=0, help="only entries after this sequence")
    parser.add_argument("--limit", type=int, help="stop after this many entries")
    parser.add_argument("--page", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to let the index catch up (60)"
    )


MAX_SEQUENCE = 2**63 - 1  # a bigint: the ledger's sequence numbers


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    try:
        query = query_of(args)
    except ValueError as e:
        print(f"carnet log: {e}", file=sys.stderr)
        return 2
    sizes = [args.after, args.limit or 1, args.page]
    if args.after < 0 or min(sizes[1:]) < 1 or max(sizes) > MAX_SEQUENCE:
        print(
            f"carnet log: --after must be 0 to {MAX_SEQUENCE}, --limit and --page 1 to it",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.wait <= 3600:  # NaN fails both
        print("carnet log: --wait takes 0 to 3600 seconds", file=sys.stderr)
        return 2
    encode = msgspec.json.Encoder().encode
    out = sys.stdout.buffer
    written = 0
    try:
        await catch_up_index(pool, args.wait)
        async with contextlib.aclosing(iter_ledger(pool, query, args.page)) as entries:
            async for sequence, record in entries:
                out.write(encode(entry_out(sequence, record)) + b"\n")
                written += 1
                if written % args.page == 0:
                    out.flush()
                if args.limit is not None and written >= args.limit:
                    break
        out.flush()
    except (IndexBehind, UnreadableEntry) as e:
        print(f"carnet log: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): not an error; stdout is closed quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
