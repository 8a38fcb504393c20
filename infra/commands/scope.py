"""`carnet scope --out DIR` plus selectors: scope a breach into a folder of artifacts.

It catches the access index up itself (a command cannot count on a
server's workers), reads every entry the selectors match, rebuilds each
disclosed value by replay, verifies the hash chain, writes the artifacts
(infra/report/files.py), and records its own export in the access ledger
before writing them: what it hands over is personal data too.

Exit status: 0 written; 1 written, but the hash chain is tampered with (the
report says where), or nothing written because the index cannot catch up or
an entry no longer decodes; 2 bad input.
"""

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import asyncpg

from domain.ledger import AccessRecord
from infra import access_index
from infra.commands.log import instant, text
from infra.eventstore import EventStore
from infra.ledger import Ledger, UnreadableEntry
from infra.report import disclosed_by, reflected, scoping_service, write_artifacts
from services.actors import Actor, ActorKind
from services.common import SystemClock
from services.scoping import ScopeSelector

# The CLI runs with the database's own rights: it scopes as an analyst would.
CLI_ANALYST = Actor(ActorKind.ANALYST, UUID(int=0), display_name="carnet scope")
CHAIN_SECONDS = 900.0
# option -> (selector field, help)
SETS = {
    "token": ("token_ids", "a token id"),
    "actor": ("actor_ids", "an actor id (patient, practitioner, integration…)"),
    "integration": ("integration_ids", "an integration id"),
    "client-ip": ("client_ips", "a client address, as recorded"),
    "user-agent": ("user_agents", "a User-Agent, as recorded (escaped, at most 200 characters)"),
}
REVERSE = {
    "patient": ("patient_ids", "every actor that touched this patient"),
    "establishment": ("establishment_ids", "every actor that touched a patient of this one"),
    "practitioner": ("practitioner_ids", "every actor that touched this practitioner's records"),
    "record": ("record_ids", "every actor that touched this record"),
}


def _awareness(value: str) -> datetime:
    return datetime.now(UTC) if value == "now" else instant(end=False)(value)


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "scope",
        help="scope a breach: records, values as of access, whom to notify, an Art. 33 draft",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write to")
    for option, (dest, what) in SETS.items():
        name = option.upper().replace("-", "_")
        p.add_argument(
            f"--{option}", dest=dest, action="append", type=text, metavar=name, help=what
        )
        p.add_argument(
            f"--not-{option}",
            dest=f"not_{dest}",
            action="append",
            type=text,
            metavar=name,
            help=f"not {what}",
        )
    for option, (dest, what) in REVERSE.items():
        name = option.upper().replace("-", "_")
        p.add_argument(
            f"--{option}", dest=dest, action="append", type=text, metavar=name, help=what
        )
    p.add_argument(
        "--from",
        dest="since",
        type=instant(end=False),
        metavar="TIME",
        help="at or after (a date: from its start, UTC)",
    )
    p.add_argument(
        "--to",
        dest="until",
        type=instant(end=True),
        metavar="TIME",
        help="before (a date: through that day, UTC)",
    )
    p.add_argument(
        "--awareness",
        type=_awareness,
        metavar="TIME|now",
        help="when the controller became aware of the breach (Art. 33: 72 hours from it)",
    )


def selector(args: argparse.Namespace) -> ScopeSelector:
    given = {
        dest: tuple(dict.fromkeys(getattr(args, dest) or ()))
        for dest in ScopeSelector.__struct_fields__
        if dest not in ("since", "until")
    }
    return ScopeSelector(**given, since=args.since, until=args.until)


class Meter:
    """Progress on stderr, when it is a terminal: how many, how fast, how long still."""

    def __init__(self, shown: bool) -> None:
        self.shown = shown
        self.began: dict[str, float] = {}
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        began = self.began.setdefault(phase, now)
        if (total is None or done < total) and now - self.last < 0.2:
            return
        self.last = now
        rate = done / (now - began) if now > began else 0.0
        line = f"{phase}: {done:,}" + (f"/{total:,}" if total else "")
        line += f"  {rate:,.0f}/s"
        if total and rate and done < total:
            line += f"  ETA {(total - done) / rate:,.0f} s"
        end = "\n" if total is not None and done >= total else ""
        sys.stderr.write(f"\r\x1b[K{line}{end}")
        sys.stderr.flush()


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    try:
        # Made first: a folder that cannot be written fails before any work.
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"carnet scope: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        caught = await access_index.catch_up_index(pool)
    except access_index.IndexBehind as e:
        print(f"carnet scope: {e}", file=sys.stderr)
        return 1
    meter = Meter(sys.stderr.isatty())
    if caught:
        meter("access index", caught, caught)
    service = scoping_service(pool, SystemClock(), chain_seconds=CHAIN_SECONDS)
    try:
        scope = await service.scope(
            CLI_ANALYST, selector(args), awareness=args.awareness, progress=meter
        )
    except UnreadableEntry as e:
        print(
            f"carnet scope: {e}: the ledger has been altered, nothing can be scoped over it "
            "(`carnet verify` says where)",
            file=sys.stderr,
        )
        return 1
    # Fail closed, as the API does: nothing is handed over unrecorded.
    ledger = Ledger(EventStore(pool))
    try:
        await ledger.record(
            AccessRecord(
                actor_kind=CLI_ANALYST.kind.value,
                actor_id="cli",
                action="export",
                resource_type="scope",
                record_ids=tuple(i.record_id for i in disclosed_by(scope)),
                patient_ids=tuple(p.patient_id for p in scope.patients),
                fields=("scope.json", "notify", "report"),
                items=tuple(disclosed_by(scope)),
                purpose="breach-scoping",
                at=datetime.now(UTC),
                request_id=f"cli-{uuid.uuid4().hex}",
                user_agent="carnet scope",
                as_of=reflected(scope),
            )
        )
    finally:
        await ledger.close()
    written = write_artifacts(scope, args.out)
    n = scope.summary
    print(
        f"{n.records} records ({n.appointments} appointments), "
        f"{n.patients_identified} patients identified and {n.patients_concerned_only} "
        f"concerned only, {n.establishments} establishments; {n.not_found} not found, "
        f"{n.denied} denied; hash chain {scope.chain.state}"
        + ("; WINDOW REACHES BEFORE THE LEDGER'S START" if scope.window.reaches_before_log else "")
    )
    for path in written:
        print(path)
    return 1 if scope.chain.state == "tampered" else 0
