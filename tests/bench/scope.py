"""Issue 8, benchmark 2 ([i8-2]): the full report of a scope (values as of access time, CSVs,
HTML) for an incident of ~6,000 appointments, against a raw scan of the same entries, same run.

The log: tests/bench/history.py's directory and bookings (40 practitioners in 4
establishments, 400 patients, 6,000 bookings, one in ten cancelled later). The ledger: a
practice software's token syncing one agenda from its usual address for days (the
baseline), then the same token from another address reading every practitioner's agenda
of every day (one entry per agenda, ~20 appointments each; half the practitioners granted
without the contact scope, so masked), plus refused look-ups of unknown ids. Every agenda
entry is as of the log's head, with its transaction id, as a read-model read records it.

Ours: `ScopingService.scope` (the index search, every entry read from the log and
decoded, every value rebuilt by replay, every patient's contact then, the chain verified
from the first entry, the anomaly start) plus `write_artifacts` (scope.json, the CSVs,
report.md, report.html, the SVG), as `carnet scope` runs them.
Baseline: the same entries found through the same index query and read from the log,
their stored bytes fetched and nothing else done with them.

Goal: ours <= 5 s = 5,000 ms (an absolute ceiling); the ratio to the raw scan puts it in scale.

Run it alone: `python -m tests.bench.scope [--quick]`.
"""

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from eventsourcing.persistence import StoredEvent

from domain.ledger import LEDGER_ID, AccessRecord, Disclosure
from infra import access_index
from infra.bootstrap import open_pool
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, EventStore
from infra.ledger import Ledger
from infra.report import scoping_service, write_artifacts
from infra.settings import Settings
from services.actors import Actor, ActorKind
from services.common import SystemClock
from services.scoping import ScopeSelector
from services.scoping.service import query
from tests.bench.common import Config, Result, fresh_database, say, server_url, table
from tests.bench.history import fill_log

TOKEN = "5cbe587c-fc32-4620-ba18-57daf5d6627f"
SOFTWARE = "7d47f0e3-8ca4-4b5f-929f-37ca94883abb"
USUAL, ELSEWHERE = "10.0.0.1", "203.0.113.9"
ANALYST = Actor(ActorKind.ANALYST, uuid.UUID(int=0))
AGENDA = ("id", "start", "end", "motive_id", "motive_name", "patient_id", "patient_name")
MASKED = tuple(f for f in AGENDA if not f.startswith("patient"))
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
SELECTOR = ScopeSelector(token_ids=(TOKEN,), not_client_ips=(USUAL,))


async def _agendas(pool: asyncpg.Pool) -> dict[tuple[str, str], list[Any]]:
    """(practitioner, local day) -> its Booked events, from the log (all committed by now)."""
    mapper = TypedMapper()
    rows = await pool.fetch(
        "SELECT originator_id, originator_version, topic, state FROM carnet.events "
        "WHERE topic LIKE '%Appointment.Booked' ORDER BY position"
    )
    days: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        e = mapper.to_domain_event(StoredEvent(r[0], r[1], r[2], r[3]))
        days.setdefault((str(e.practitioner_id), e.start.date().isoformat()), []).append(e)
    return days


def _entry(at: datetime, ip: str, items: list[Disclosure], as_of: Checkpoint, **kw: Any) -> Any:
    return AccessRecord(
        actor_kind="integration",
        actor_id=SOFTWARE,
        token_id=TOKEN,
        integration_id=SOFTWARE,
        action="read",
        resource_type=kw.pop("resource_type", "agenda"),
        record_ids=tuple(i.record_id for i in items) + tuple(kw.pop("asked", ())),
        patient_ids=tuple(dict.fromkeys(i.patient_id for i in items if i.patient_id)),
        fields=items[0].fields if items else (),
        items=tuple(items),
        at=at,
        request_id=uuid.uuid4().hex,
        client_ip=ip,
        user_agent="PracticeSoft/3.2" if ip == USUAL else "python-requests/2.31",
        as_of=as_of.position if items else 0,
        as_of_tx=as_of.tx if items else 0,
        **kw,
    )


async def make_incident(pool: asyncpg.Pool, bookings: int) -> tuple[int, int]:
    """The log and its ledger (see the module docstring): (entries, appointments disclosed)."""
    await fill_log(pool, bookings, 8)
    head = await EventStore(pool).head()
    days = await _agendas(pool)
    practitioners = sorted({p for p, _ in days})
    masked = set(practitioners[::2])

    def items(key: tuple[str, str]) -> list[Disclosure]:
        hidden = key[0] in masked
        return [
            Disclosure(
                record_id=str(e.originator_id),
                patient_id=str(e.patient_id),
                identified=not hidden,
                practitioner_id=str(e.practitioner_id),
                establishment_id=str(e.establishment_id),
                fields=MASKED if hidden else AGENDA,
            )
            for e in days[key]
        ]

    first = min(days)
    records = [_entry(START + timedelta(hours=h), USUAL, items(first), head) for h in range(120)]
    attack = START + timedelta(days=6)
    for n, key in enumerate(sorted(days, key=lambda k: (k[1], k[0]))):
        records.append(_entry(attack + timedelta(seconds=2 * n), ELSEWHERE, items(key), head))
        if n % 10 == 0:
            records.append(
                _entry(
                    attack + timedelta(seconds=2 * n + 1),
                    ELSEWHERE,
                    [],
                    head,
                    resource_type="appointment",
                    outcome="not-found",
                    asked=(str(uuid.uuid4()),),
                )
            )
    ledger = Ledger(EventStore(pool))
    try:
        for start in range(0, len(records), 200):
            await asyncio.gather(*(ledger.record(r) for r in records[start : start + 200]))
    finally:
        await ledger.close()
    await access_index.catch_up_index(pool, within=300)
    return len(records), sum(len(v) for v in days.values())


async def raw_scan(pool: asyncpg.Pool) -> int:
    """The same entries, found by the same index query, their stored bytes fetched."""
    sql, args = access_index.search(query(SELECTOR), limited=False)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        sequences = [r[0] for r in await conn.fetch(sql, *args)]
        rows = await conn.fetch(
            "SELECT state FROM carnet.events WHERE originator_id = $1 "
            "AND originator_version = ANY($2::int[]) ORDER BY originator_version",
            LEDGER_ID,
            sequences,
        )
    return sum(len(r[0]) for r in rows)


async def full_report(pool: asyncpg.Pool, out: Path) -> tuple[float, float, Any]:
    """Seconds to scope, seconds to write the artifacts, and the scope."""
    began = time.perf_counter()
    service = scoping_service(pool, SystemClock(), chain_seconds=600)
    scope = await service.scope(ANALYST, SELECTOR)
    scoped = time.perf_counter()
    write_artifacts(scope, out)
    return scoped - began, time.perf_counter() - scoped, scope


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


async def bench_scope(server: str, cfg: Config) -> list[Result]:
    """`make bench`'s entry: 6,000 bookings and [5]'s rounds (1,500 and 1 with --quick)."""
    quick = cfg.rebuild_bookings < Config().rebuild_bookings
    return await measure(server, 1500 if quick else 6000, cfg.rebuild_rounds)


async def measure(server: str, bookings: int, rounds: int) -> list[Result]:
    say(f"\n[i8-2] the full report of a scope over ~{bookings:,} appointments vs a raw scan")
    out = Path(tempfile.mkdtemp(prefix="carnet-bench-scope-"))
    async with fresh_database(server, "scope") as url:
        pool = await open_pool(url, Settings(pool_min=2, pool_max=8))
        try:
            entries, appointments = await make_incident(pool, bookings)
            say(f"    ledger: {entries:,} entries naming {appointments:,} appointments")
            await raw_scan(pool)
            await full_report(pool, out)  # warm: the log in shared buffers for both
            ours, raw, parts = [], [], []
            for r in range(rounds):
                began = time.perf_counter()
                size = await raw_scan(pool)
                raw.append(time.perf_counter() - began)
                scoped, written, scope = await full_report(pool, out)
                ours.append(scoped + written)
                parts.append((scoped, written))
                say(
                    f"    round {r + 1}: raw scan {raw[-1]:.3f} s ({size / 1e6:.1f} MB); "
                    f"report {ours[-1]:.2f} s (scope {scoped:.2f} s, files {written:.2f} s)"
                )
            files = _size(out)
        finally:
            await pool.close()
            shutil.rmtree(out, ignore_errors=True)
    n = scope.summary
    best = min(range(rounds), key=lambda i: ours[i])
    notes = (
        f"{n.records:,} records, {n.patients_identified + n.patients_concerned_only:,} "
        f"patients, {n.establishments} establishments, {n.entries:,} entries in scope; "
        f"median of {rounds} rounds; scope {parts[best][0]:.2f} s + files "
        f"{parts[best][1]:.2f} s in the best round; artifacts {files / 1e6:.1f} MB"
    )
    ratios = [o / b for o, b in zip(ours, raw, strict=True)]
    return [
        Result(
            "[i8-2] full scope report",
            sorted(ours)[rounds // 2] * 1000,
            sorted(raw)[rounds // 2] * 1000,
            "raw scan of the same entries",
            "ms",
            None,
            notes,
            ratios,
            ceiling=5000.0,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scope", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,500 bookings, one round")
    args = parser.parse_args()
    with server_url() as server:
        results = asyncio.run(measure(server, 1500 if args.quick else 6000, 1 if args.quick else 3))
    say(table(results))


if __name__ == "__main__":
    main()
