"""Benchmarks 7 and 8: what the access ledger costs.

[7] Audited agenda reads/s. `GET /practitioners/{id}/agenda?date=…` (audited, answered from
the agenda read model) of a day holding 20 appointments, read by a practitioner's token
from `audit_clients` concurrent client workers. Two app servers (tests/bench/server.py,
one process each, as in [3]) serve the same database: one as shipped, whose responses
leave only once their access entry is group-committed, and one built with
`Ledger(EventStore(pool), disabled=True)`, which records nothing. Rounds alternate
between them, order reversed every round. Besides reads/s and latency, the audited
server's group commits during the rounds: its exact batches (ledger rows grouped by the
transaction that wrote them) and its `carnet_ledger_batch_entries` histogram from /metrics.

[8] Ledger entries/s. `Ledger.record` driven directly by N concurrent callers (N in
`ledger_callers`) for a fixed time each, on a fresh database: entries/s, the number of
INSERTs (batches) and the batch-size distribution, and the latency of `record`. Baseline,
in the same rounds: single-row autocommit asyncpg INSERTs of the same stored bytes into a
table shaped like carnet.events (benchmark 1's), from N tasks over a production-sized pool.
"""

import contextlib
import dataclasses
import itertools
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import msgspec
from eventsourcing.utils import get_topic
from prometheus_client.parser import text_string_to_metric_families

from domain.ledger import GENESIS, LEDGER_ID, AccessRecord, AccessRecorded, link
from domain.values import BookingPolicy, Motive
from infra.bootstrap import build_services, open_pool
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.http.keys import Services
from infra.http.reads import AGENDA_FIELDS
from infra.ledger import Ledger, _Shard, _Waiting
from infra.projector import Projector
from infra.schema import SCHEMA
from infra.settings import Settings
from projections import all_projections
from services.actors import ActorKind
from tests.bench import append
from tests.bench.common import (
    Config,
    Result,
    Run,
    Side,
    drive,
    fresh_database,
    median_rate,
    paired_ratios,
    percentile,
    rounds,
    say,
)
from tests.bench.http_bookings import HttpSide, Served, bench_patient, ms, server, slot_starts
from tests.conftest import T0, FakeClock
from tests.world import HOURS, META, ROOT

APPOINTMENTS = 20  # on the day read
MOTIVE = Motive("consultation", "Consultation", 20)
TZ = "Europe/Paris"

AUDITED = "GET agenda, ledger on (audited)"
UNAUDITED = "GET agenda, Ledger(disabled=True)"
UNWRITTEN = "GET agenda, ledger on but no INSERT (diagnosis)"


# -- [7] audited agenda reads -----------------------------------------------------


@dataclass
class Agenda:
    practitioner: UUID
    day: date
    token: str

    @property
    def path(self) -> str:
        return f"/practitioners/{self.practitioner}/agenda?date={self.day.isoformat()}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_agenda(services: Services) -> Agenda:
    """One practitioner with APPOINTMENTS bookings on one day, and the practitioner's token."""
    d = services.directory
    place = await d.register_establishment(ROOT, META, "Bench clinic", "1 rue du Banc", "Paris", TZ)
    practitioner = await d.register_practitioner(
        ROOT,
        META,
        name="Dr Bench",
        specialty="general practice",
        establishment_id=place.id,
        policy=BookingPolicy(),
        motives=[MOTIVE],
        hours=HOURS,
    )
    day = (T0 + timedelta(days=1)).date()  # a Wednesday: 21 slots of 20 minutes
    starts = slot_starts(day, ZoneInfo(TZ))[:APPOINTMENTS]
    for i, start in enumerate(starts):
        patient_id = await bench_patient(services, i)
        await services.booking.book(
            ROOT,
            META,
            practitioner_id=practitioner.id,
            motive_id=MOTIVE.id,
            start=start,
            patient_id=patient_id,
        )
    token = await services.credentials.issue_token(
        ROOT, META, ActorKind.PRACTITIONER, practitioner.id, label="bench practitioner"
    )
    return Agenda(practitioner.id, day, token.secret)


class ReadSide(HttpSide):
    """HttpSide's workers and CPU accounts, GETting one path instead of POSTing bodies."""

    async def request(self, worker: int) -> None:
        async with self.session.get(self.path, headers=self.headers) as resp:
            text = await resp.read()
            if resp.status != self.expect:
                self.failures.append(f"{resp.status} {text[:300]!r}")


async def check_agenda(side: ReadSide) -> None:
    """The route answers the whole agenda, names included: a real disclosure to record."""
    async with side.session.get(side.path, headers=side.headers) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"agenda read answered {resp.status}: {body[:300]!r}")
    found = msgspec.json.decode(body)["appointments"]
    named = [a for a in found if a.get("patient_name")]
    if len(found) != APPOINTMENTS or len(named) != APPOINTMENTS:
        raise RuntimeError(f"agenda has {len(found)} appointments, {len(named)} named")


async def scrape(session: aiohttp.ClientSession) -> dict[str, float]:
    """The carnet_ledger_* samples of a server's /metrics (histogram buckets keyed `…{le}`)."""
    async with session.get("/metrics") as resp:
        text = await resp.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("carnet_ledger_"):
                le = sample.labels.get("le")
                samples[f"{sample.name}{{{le}}}" if le else sample.name] = sample.value
    return samples


def bucket_text(before: dict[str, float], after: dict[str, float]) -> str:
    """The batch-size histogram's growth between two scrapes, as percentile bucket bounds."""
    name = "carnet_ledger_batch_entries"
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if count <= 0:
        return "no batches in /metrics"
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    prefix = f"{name}_bucket{{"
    bounds = sorted(
        (float(k[len(prefix) : -1]), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(prefix)
    )

    def bound(p: float) -> str:
        for le, cumulative in bounds:
            if cumulative >= p / 100 * count:
                return f"<= {le:g}" if le != float("inf") else "> 512"
        return "?"

    write = "carnet_ledger_write_duration_seconds"
    writes = after.get(f"{write}_count", 0.0) - before.get(f"{write}_count", 0.0)
    write_sum = after.get(f"{write}_sum", 0.0) - before.get(f"{write}_sum", 0.0)
    mean_write = ms(write_sum / writes) if writes else "-"
    failures = after.get("carnet_ledger_failures_total", 0.0) - before.get(
        "carnet_ledger_failures_total", 0.0
    )
    return (
        f"{count:,.0f} batches, {total:,.0f} entries, mean {total / count:.1f}/batch, "
        f"p50 {bound(50)}, p90 {bound(90)}, max {bound(100)} (histogram buckets); "
        f"mean write {mean_write}; {failures:.0f} failed batches"
    )


_LEDGER_TOPIC = get_topic(AccessRecorded)


async def ledger_head(pool: asyncpg.Pool) -> int:
    """The last ledger entry's sequence (log position), over every shard."""
    head = await pool.fetchval(
        f"SELECT max(position) FROM {SCHEMA}.events WHERE topic = $1", _LEDGER_TOPIC
    )
    return int(head or 0)


async def batches_in_log(pool: asyncpg.Pool, after: int, upto: int) -> list[int]:
    """The sizes of the ledger INSERTs that wrote sequences after..upto: rows per transaction."""
    rows = await pool.fetch(
        f"""SELECT count(*) FROM {SCHEMA}.events
        WHERE topic = $1 AND position > $2 AND position <= $3
        GROUP BY tx ORDER BY min(position)""",
        _LEDGER_TOPIC,
        after,
        upto,
    )
    return [int(r[0]) for r in rows]


def size_text(sizes: list[int]) -> str:
    if not sizes:
        return "no batches"
    floats = [float(n) for n in sizes]
    return (
        f"{len(sizes):,} INSERTs of {sum(sizes):,} entries, mean {sum(sizes) / len(sizes):.1f}, "
        f"p50 {percentile(floats, 50):g}, p90 {percentile(floats, 90):g}, max {max(sizes)}"
    )


async def bench_audit(server_db: str, cfg: Config) -> list[Result]:
    clients = cfg.audit_clients
    say(
        f"\n[7] audited agenda reads/s ({clients} client workers, one server process per side, "
        f"{cfg.audit_rounds} rounds of {cfg.audit_seconds:g} s per side, {APPOINTMENTS} "
        f"appointments on the day{_interval(cfg)})"
    )
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(server_db, "audit"))
        pool = await open_pool(url, Settings(pool_min=2, pool_max=4))
        stack.push_async_callback(pool.close)
        agenda = await make_agenda(build_services(pool, clock=FakeClock(T0)))
        for projection in all_projections():
            await Projector(pool, projection).catch_up()
        profile = cfg.profile_server
        modes = {AUDITED: "on", UNAUDITED: "off"}
        if cfg.diagnose:
            modes = {AUDITED: "on", UNWRITTEN: "nowrite", UNAUDITED: "off"}
        driving = dataclasses.replace(cfg, concurrency=clients)
        interval = (
            [] if cfg.ledger_interval is None else ["--ledger-interval", str(cfg.ledger_interval)]
        )
        sides: dict[str, ReadSide] = {}
        for label, mode in modes.items():
            served = await stack.enter_async_context(
                server(
                    "carnet",
                    url,
                    profile=f"{profile}.{mode}" if profile else "",
                    extra=["--ledger", mode, *interval],
                )
            )
            sides[label] = await _read_side(stack, served, agenda, clients)
            await check_agenda(sides[label])
        for read_side in sides.values():  # warm-up: connections, caches, prepared statements
            await read_side.run(driving, 10**9, min(2.0, cfg.audit_seconds), keep=False)

        async def measure(label: str) -> Run:
            return await sides[label].run(driving, 10**9, cfg.audit_seconds)

        def measured(label: str) -> Side:
            return label, lambda: measure(label)

        metrics_before = await scrape(sides[AUDITED].session)
        head_before = await ledger_head(pool)
        runs = await rounds([measured(label) for label in sides], cfg.audit_rounds, False)
        metrics_after = await scrape(sides[AUDITED].session)
        head_after = await ledger_head(pool)
        logged = await batches_in_log(pool, head_before, head_after)

    for label, read_side in sides.items():
        if read_side.failures:
            say(
                f"    !! {len(read_side.failures)} failed ({label}); first: {read_side.failures[0]}"
            )
    every = {label: [t for r in runs[label] for t in r.latencies] for label in sides}
    latency = {
        label: f"p50 {ms(percentile(every[label], 50))}, p99 {ms(percentile(every[label], 99))}"
        for label in sides
    }
    seconds = sum(r.seconds for r in runs[AUDITED])
    for label, read_side in sides.items():
        cpu = read_side.server_cpu / max(1, sum(r.ops for r in runs[label]))
        say(
            f"    {label}: {median_rate(runs[label]):,.0f} reads/s, {latency[label]}, "
            f"server CPU {cpu * 1e6:,.0f} µs/read"
        )
        say(read_side.cpu_line(label))
    if UNWRITTEN in runs:
        for label in (AUDITED, UNWRITTEN):
            ratios = paired_ratios(runs[label], runs[UNAUDITED])
            say(f"    = {label}: {statistics.median(ratios):.2f}x the disabled ledger")
    say(
        f"    audited server's ledger during its rounds: {sum(logged) / seconds:,.0f} entries/s; "
        f"from the log: {size_text(logged)}"
    )
    say(f"    from its /metrics: {bucket_text(metrics_before, metrics_after)}")
    answered = sum(r.ops for r in runs[AUDITED])
    if sum(logged) != answered:  # every audited 200 is one entry; the baseline writes none
        say(f"    !! {sum(logged):,} ledger entries for {answered:,} audited reads")
    if profile:
        files = ", ".join(f"{profile}.{mode}.0" for mode in modes.values())
        say(f"    server profiles (cProfile, slows them down): {files}")
    notes = (
        f"{clients} client workers; audited {latency[AUDITED]}, unaudited {latency[UNAUDITED]}; "
        f"audited server's group commits: {size_text(logged)}"
    )
    return [
        Result(
            "[7] audited agenda reads/s",
            median_rate(runs[AUDITED]),
            median_rate(runs[UNAUDITED]),
            "ledger disabled",
            "/s",
            0.8,
            notes,
            paired_ratios(runs[AUDITED], runs[UNAUDITED]),
        )
    ]


async def _read_side(
    stack: contextlib.AsyncExitStack, served: Served, agenda: Agenda, clients: int
) -> ReadSide:
    connector = aiohttp.TCPConnector(limit=clients)
    session = aiohttp.ClientSession(served.base_url, connector=connector)
    await stack.enter_async_context(session)
    return ReadSide(session, served, agenda.path, agenda.headers, [], 200)


def _interval(cfg: Config) -> str:
    if cfg.ledger_interval is None:
        return ""
    return f", --ledger-interval {cfg.ledger_interval:g} s"


# -- [8] ledger entries/s and group commits ------------------------------------------


class CountingLedger(Ledger):
    """The shipped ledger, noting the size of every batch it has made durable."""

    def __init__(self, store: EventStore, interval: float | None = None) -> None:
        super().__init__(store)
        if interval is not None:
            self.interval = interval
        self.sizes: list[int] = []

    async def _write(self, shard: _Shard, batch: list[_Waiting]) -> None:
        await super()._write(shard, batch)
        refused = [w for w in batch if not w.done.cancelled() and w.done.exception() is not None]
        if not refused:
            self.sizes.append(len(batch))


def agenda_reads(n: int) -> list[AccessRecord]:
    """What `n` audited agenda reads of 20 appointments record (distinct request ids)."""
    token, practitioner = str(uuid4()), str(uuid4())
    appointments = tuple(str(uuid4()) for _ in range(APPOINTMENTS))
    patients = tuple(str(uuid4()) for _ in range(APPOINTMENTS))
    at = datetime.now(UTC)
    return [
        AccessRecord(
            actor_kind="practitioner",
            actor_id=practitioner,
            token_id=token,
            action="read",
            resource_type="agenda",
            record_ids=appointments,
            patient_ids=patients,
            fields=AGENDA_FIELDS,
            outcome="allowed",
            at=at + timedelta(microseconds=i),
            request_id=uuid4().hex,
            client_ip="127.0.0.1",
            user_agent="Python/3.11 aiohttp/3",
            as_of=1000 + i,
        )
        for i in range(n)
    ]


@dataclass
class Level:
    """One concurrency level: its ledger, and what its measured rounds wrote."""

    callers: int
    ledger: CountingLedger
    sizes: list[int] = field(default_factory=list)  # batches of the measured rounds
    logged: list[int] = field(default_factory=list)  # the same, from the table
    latencies: list[float] = field(default_factory=list)


async def bench_ledger(server_db: str, cfg: Config) -> list[Result]:
    say(
        f"\n[8] ledger entries/s: Ledger.record vs raw INSERT, {cfg.ledger_rounds} rounds of "
        f"{cfg.ledger_seconds:g} s per side at each of {', '.join(map(str, cfg.ledger_callers))} "
        f"concurrent callers{_interval(cfg)}"
    )
    records = agenda_reads(2000)
    mapper = TypedMapper()
    (prev, digest), *_ = link(GENESIS, records[:1])
    stored = mapper.to_stored_event(
        AccessRecorded(
            originator_id=LEDGER_ID,
            originator_version=1,
            timestamp=datetime.now(UTC),
            record=records[0],
            prev_hash=prev,
            hash=digest,
        )
    )
    size = Settings().pool_max  # production's pool: the raw INSERTs may use all of it
    results: list[Result] = []
    async with fresh_database(server_db, "ledger") as url:
        pool = await append.open_bench_pool(url, size)
        try:
            versions = itertools.count(1)
            raw_id = uuid4()
            meta = msgspec.json.encode(
                {"actor_kind": "system", "actor_id": "access-ledger"}
            ).decode()

            async def raw(_: int) -> None:
                await pool.execute(
                    append.RAW_INSERT, raw_id, next(versions), stored.topic, stored.state, meta
                )

            def ledger_side(level: Level, seconds: float = cfg.ledger_seconds) -> Side:
                async def measure() -> Run:
                    cycle: Iterator[AccessRecord] = itertools.cycle(records)
                    head, made = await ledger_head(pool), len(level.ledger.sizes)
                    run = await drive(
                        lambda _: level.ledger.record(next(cycle)),
                        concurrency=level.callers,
                        count=10**9,
                        max_seconds=seconds,
                    )
                    level.sizes += level.ledger.sizes[made:]
                    level.logged += await batches_in_log(pool, head, await ledger_head(pool))
                    level.latencies += run.latencies
                    return run

                return f"Ledger.record, {level.callers} callers", measure

            def raw_side(callers: int, seconds: float = cfg.ledger_seconds) -> Side:
                async def measure() -> Run:
                    return await drive(raw, concurrency=callers, count=10**9, max_seconds=seconds)

                return f"raw INSERT, {callers} tasks over a pool of {size}", measure

            warm = Level(10, CountingLedger(EventStore(pool), cfg.ledger_interval))
            for _, warm_up in (ledger_side(warm, 0.5), raw_side(10, 0.5)):
                await warm_up()
            say(f"    stored state of one entry: {len(stored.state)} bytes ({stored.topic})")
            for callers in cfg.ledger_callers:
                level = Level(callers, CountingLedger(EventStore(pool), cfg.ledger_interval))
                ours, baseline = ledger_side(level), raw_side(callers)
                runs = await rounds([ours, baseline], cfg.ledger_rounds, warm=False)
                results.append(_ledger_result(level, runs[ours[0]], runs[baseline[0]], size))
        finally:
            await pool.close()
    return results


def _ledger_result(level: Level, ours: list[Run], raw: list[Run], pool_size: int) -> Result:
    seconds = sum(r.seconds for r in ours)
    entries = sum(r.ops for r in ours)
    mismatch = (
        "" if level.logged == level.sizes else f" (the table says: {size_text(level.logged)})"
    )
    latency = (
        f"record() p50 {ms(percentile(level.latencies, 50))}, "
        f"p99 {ms(percentile(level.latencies, 99))}"
    )
    say(
        f"    = {level.callers:>3} callers: {entries / seconds:,.0f} entries/s, "
        f"{len(level.sizes) / seconds:,.0f} INSERTs/s; {size_text(level.sizes)}{mismatch}; "
        f"{latency}"
    )
    return Result(
        f"[8] ledger entries/s, {level.callers} callers",
        median_rate(ours),
        median_rate(raw),
        f"raw INSERT/s ({level.callers} tasks)",
        "/s",
        None,
        f"{size_text(level.sizes)}{mismatch}; {latency}; raw INSERTs over a pool of {pool_size}",
        paired_ratios(ours, raw),
    )
