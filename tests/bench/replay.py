"""Issue 8's benchmarks 3 and 4: the log replayed through the decoder.

[i8-3] Replay events/s against a raw keyset scan, same run (goal >= 0.4x).
Ours: `infra.decoder.pages` up to the log's head (pages of 5,000 in (tx, position)
order, the next page read while this one is decoded), every event decoded by
`infra.decoder.Decoder` into its domain event, as `carnet replay` and the
point-in-time values do. Baseline: the same columns in the same pages with asyncpg
and nothing else (`SELECT ... WHERE (tx, position) > ($1, $2) ORDER BY tx, position
LIMIT 5000`), as in benchmark [5].

[i8-4] Peak RSS of one replay of 10 million events (`--quick`: 1 million), the same
loop as ours above: the process's resident set (VmRSS) and its peak since the replay
began (VmHWM, reset through /proc/self/clear_refs) after each tenth of the log. Flat
means the peak at the end is the peak after the first tenth (goal: within 5 %).

The log is made of real events, made by the aggregates and mapped by the TypedMapper:
the directory of tests/bench/history.py, then per booking an `AgendaDay.SlotReserved`,
an `Appointment.Booked` and three access-ledger entries (the booking's write-ahead and
final entries, and an agenda read of five lines), multiplied in SQL by
generate_series (1,000,000 events per statement), not written one by one.
"""

import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

import asyncpg
import msgspec
from eventsourcing.persistence import StoredEvent

from domain import agenda
from domain.agenda import AgendaDay
from domain.ledger import GENESIS, LEDGER_ID, AccessRecord, AccessRecorded, Disclosure, link
from domain.values import Source
from infra.bootstrap import open_pool
from infra.codec import TypedMapper
from infra.decoder import Decoder, pages
from infra.eventstore import EventStore
from infra.schema import SCHEMA
from infra.settings import Settings
from tests.bench.common import (
    Config,
    Result,
    Run,
    fresh_database,
    median_rate,
    paired_ratios,
    rounds,
    say,
)
from tests.bench.history import MOTIVES, Writer, _directory

PAGE = 5000
SCAN = f"""
SELECT position, tx, originator_id, originator_version, topic, state, recorded_at, metadata
FROM {SCHEMA}.events WHERE (tx, position) > ($1::xid8, $2::bigint)
ORDER BY tx, position LIMIT $3
"""
RAW = "raw keyset scan"
PER_STATEMENT = 1_000_000  # events
FILL_SECONDS = 1800.0  # one statement of the fill, on a busy machine (the pool's default: 30 s)


def _ledger_entry(n: int, record: AccessRecord) -> StoredEvent:
    (prev, digest), *_ = link(GENESIS, [record])
    event = AccessRecorded(
        originator_id=LEDGER_ID,
        originator_version=n,
        timestamp=datetime.now(UTC),
        record=record,
        prev_hash=prev,
        hash=digest,
    )
    return TypedMapper().to_stored_event(event)


def templates(practitioner: UUID, establishment: UUID, patient: UUID) -> list[StoredEvent]:
    """One booking's events, as the services append them, and its three ledger entries."""
    day = AgendaDay(practitioner_id=practitioner, day=date(2026, 12, 2))
    start = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    appointment = agenda.book(
        day,
        patient_id=patient,
        establishment_id=establishment,
        motive_id=MOTIVES[0].id,
        duration_minutes=MOTIVES[0].duration_minutes,
        start=start,
        end=start.replace(minute=20),
        source=Source.PATIENT,
    )
    mapper = TypedMapper()
    stored = [mapper.to_stored_event(e) for e in day.collect_events()[1:]]  # SlotReserved
    stored += [mapper.to_stored_event(e) for e in appointment.collect_events()]
    lines = [
        Disclosure(
            record_id=str(appointment.id if n == 0 else uuid4()),
            patient_id=str(patient if n == 0 else uuid4()),
            identified=True,
            practitioner_id=str(practitioner),
            establishment_id=str(establishment),
            fields=("id", "start", "end", "patient_id", "patient_name", "status"),
        )
        for n in range(5)
    ]
    attempt = AccessRecord(
        actor_kind="patient",
        actor_id=str(patient),
        token_id=str(uuid4()),
        action="create",
        resource_type="appointment",
        patient_ids=(str(patient),),
        outcome="attempted",
        at=start,
        request_id=uuid4().hex,
        client_ip="203.0.113.7",
        user_agent="CarnetApp/4.2 (iPhone)",
    )
    booked = replace(attempt, outcome="allowed", items=(lines[0],), as_of=1000)
    agenda_read = replace(
        booked,
        action="read",
        resource_type="agenda",
        items=tuple(lines),
        selectors=(("date", "2026-12-02"), ("practitioner_id", str(practitioner))),
        as_of_tx=2000,
    )
    records = [attempt, booked, agenda_read]
    stored += [_ledger_entry(1, r) for r in records]
    return stored


_MULTIPLY = f"""
INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state, metadata)
SELECT CASE WHEN t.ledger THEN $1::uuid ELSE md5(i::text || '/' || t.k)::uuid END,
       CASE WHEN t.ledger THEN (i - 1) * $2 + t.lk ELSE 1 END,
       t.topic, t.state, $3::jsonb
FROM generate_series($4::bigint, $5::bigint) i,
     unnest($6::text[], $7::bytea[], $8::bool[], $9::int[], $10::int[])
       AS t(topic, state, ledger, lk, k)
"""


async def fill(pool: asyncpg.Pool, events: int) -> int:
    """A directory, then bookings of real events multiplied by SQL up to about `events`."""
    began = time.perf_counter()
    writer = Writer(pool)
    practitioners, patients = await _directory(writer)
    unit = templates(practitioners[0].id, practitioners[0].establishment_id, patients[0])
    ledger = [e.originator_id == LEDGER_ID for e in unit]
    per_ledger = sum(ledger)
    # each ledger template's place among the unit's entries: versions (i - 1) * 3 + 1..3
    lk = [sum(ledger[: i + 1]) if is_ledger else 0 for i, is_ledger in enumerate(ledger)]
    meta = msgspec.json.encode(
        {"actor_kind": "patient", "actor_id": str(patients[0]), "request_id": uuid4().hex}
    ).decode()
    columns = (
        [e.topic for e in unit],
        [e.state for e in unit],
        ledger,
        lk,
        list(range(len(unit))),
    )
    units, per = max(1, events // len(unit)), max(1, PER_STATEMENT // len(unit))
    for first in range(1, units + 1, per):
        last = min(units, first + per - 1)
        args = (LEDGER_ID, per_ledger, meta, first, last, *columns)
        await pool.execute(_MULTIPLY, *args, timeout=FILL_SECONDS)
    await pool.execute(f"VACUUM ANALYZE {SCHEMA}.events", timeout=FILL_SECONDS)
    total = int(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.events"))
    say(f"    log: {total:,} events written in {time.perf_counter() - began:.1f} s")
    return total


async def raw_scan(pool: asyncpg.Pool) -> int:
    tx, position, seen = 0, 0, 0
    async with pool.acquire() as conn:
        while rows := await conn.fetch(SCAN, tx, position, PAGE):
            seen += len(rows)
            tx, position = int(rows[-1][1]), rows[-1][0]
    return seen


async def replay(
    pool: asyncpg.Pool, every: int = 0, step: Callable[[int], None] | None = None
) -> int:
    """Stream the log to its head through the decoder; `step(seen)` after every `every`."""
    store, decoder = EventStore(pool), Decoder()
    seen, mark = 0, every
    async for page in pages(store, await store.head(), size=PAGE):
        for recorded in page:
            decoder.decode(recorded)
        seen += len(page)
        if step is not None and seen >= mark:
            step(seen)
            mark += every
    return seen


def timed(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[Run]]:
    async def measure() -> Run:
        began, cpu = time.perf_counter(), time.process_time()
        n = await count()
        return Run(n, time.perf_counter() - began, cpu=time.process_time() - cpu)

    return measure


def _status(key: str) -> float:
    """A VmRSS/VmHWM line of /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """VmHWM back to the current RSS (Linux 4.0 and later; else the peak since start)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


async def bench_replay(server: str, cfg: Config) -> list[Result]:
    say(
        f"\n[i8-3] replay events/s through the decoder vs raw keyset scan "
        f"({cfg.replay_events:,} events)"
    )
    async with fresh_database(server, "replay") as url:
        pool = await open_pool(url, Settings(pool_min=2, pool_max=4))
        try:
            events = await fill(pool, cfg.replay_events)
            await raw_scan(pool)  # the log in shared buffers for both sides
            sides = [
                (RAW, timed(lambda: raw_scan(pool))),
                ("ours: replay + decode", timed(lambda: replay(pool))),
            ]
            runs = await rounds(sides, cfg.replay_rounds, warm=False)
            ours = runs["ours: replay + decode"]
            return [
                Result(
                    "[i8-3] replay through the decoder events/s",
                    median_rate(ours),
                    median_rate(runs[RAW]),
                    "raw keyset scan events/s",
                    "/s",
                    0.4,
                    f"{events:,} events (60 % access-ledger entries), pages of {PAGE:,}; client "
                    f"CPU {statistics.median(r.cpu_per_op for r in ours) * 1e6:.1f} µs/event "
                    f"(scan: {statistics.median(r.cpu_per_op for r in runs[RAW]) * 1e6:.1f})",
                    paired_ratios(ours, runs[RAW]),
                )
            ]
        finally:
            await pool.close()


async def bench_replay_rss(server: str, cfg: Config) -> list[Result]:
    total = cfg.rss_events
    say(f"\n[i8-4] peak RSS of a replay of {total:,} events, after each tenth")
    async with fresh_database(server, "replay_rss") as url:
        pool = await open_pool(url, Settings(pool_min=2, pool_max=4))
        try:
            events = await fill(pool, total)
            _reset_peak()
            start_rss = _status("VmRSS")
            steps: list[tuple[int, float, float]] = []

            def step(seen: int) -> None:
                steps.append((seen, _status("VmRSS"), _status("VmHWM")))
                say(
                    f"    {seen:>12,} events: RSS {steps[-1][1]:7.1f} MB, "
                    f"peak {steps[-1][2]:7.1f} MB"
                )

            began = time.perf_counter()
            seen = await replay(pool, max(1, events // 10), step)
            elapsed = time.perf_counter() - began
        finally:
            await pool.close()
    first, last = steps[0][2], steps[-1][2]
    series = ", ".join(f"{n / 1e6:g}M: {peak:.0f}" for n, _, peak in steps)
    return [
        Result(
            "[i8-4] replay peak RSS at the end",
            last,
            first,
            "peak RSS after the first tenth",
            "MB",
            None,
            f"{seen:,} events in {elapsed:.0f} s ({seen / elapsed:,.0f}/s); RSS before the "
            f"replay {start_rss:.0f} MB; peak after each tenth (MB): {series}",
            ceiling=round(first * 1.05, 1),
        )
    ]
