"""Issue 8 benchmark 1: the record list of one token over one day, from the access index,
with `index_entries` (10 million) access entries indexed; p99 against a raw indexed query.

Ours: `infra.access_index.records(pool, LedgerQuery(token_ids={T}, since=day, until=day+1))`,
the distinct records the token's entries that day named, each with whether any disclosed
it: the SQL built from the query, planned with its own values, in a read-only transaction.
Baseline: the same answer written by hand on the same index, `SELECT DISTINCT record_id
FROM items WHERE token_id = $1 AND at >= $2 AND at < $3`. Both sides alternate over the
same randomly chosen days. Also timed: the same list through the entries' token index and
a join to the items (one lookup per entry), as any other selector gets it.

The index tables are filled with generate_series (30 days; 5,000 tokens plus the scoped
one, which makes one entry in `SHARE`, 5,000 a day at 10 million; one item per entry,
three for one in three), then indexed as the projection indexes them and vacuumed. The log holds the
scoped token's entries only (a ledger page reads them back); the index, not the log, is
what the record list reads. Also reported: a first page of that day's entries read back
from the log (`ledger_entries`, 500 entries), and "every entry that named patient P".
"""

import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from eventsourcing.utils import get_topic

from domain.ledger import LEDGER_ID, AccessRecorded
from infra.access_index import ENTRIES, ITEMS, records
from infra.bootstrap import open_pool
from infra.readmodels import PostgresReadModels
from infra.schema import SCHEMA
from infra.settings import Settings
from projections.access_index import AccessIndexProjection
from services.ports import LedgerQuery
from tests.bench.common import Config, Result, fresh_database, percentile, say

DAYS = 30
SCOPED, SHARE = "scoped-token", 66  # one entry in 66 is the scoped token's (5,000 a day at 10M)
START = datetime(2026, 11, 1, tzinfo=UTC)
LONG = 3600.0  # seconds a fill statement may take (the pool's command timeout is 30)
RAW = f"""SELECT DISTINCT record_id FROM {ITEMS}
WHERE token_id = $1 AND at >= $2 AND at < $3 AND record_id IS NOT NULL"""
# The same answer through the entries' token index and a join (what the record list of
# any other selector costs: one items lookup per entry).
JOINED = f"""SELECT DISTINCT i.record_id FROM {ENTRIES} e JOIN {ITEMS} i ON i.sequence = e.sequence
WHERE e.token_id = $1 AND e.at >= $2 AND e.at < $3 AND i.record_id IS NOT NULL"""
# k: a well-mixed number per entry; r: an appointment, of which there are 2 million.
_FILL_ENTRIES = f"""
INSERT INTO {ENTRIES}
SELECT s, $2::timestamptz + (s::float8 / $1) * interval '{DAYS} days',
    'integration', 'actor-' || (k % 2000),
    CASE WHEN s % $3 = 0 THEN '{SCOPED}' ELSE 'token-' || k END,
    CASE WHEN s % $3 = 0 THEN 'software-1' END,
    '10.' || (k % 250) || '.' || (k / 250 % 20) || '.1', 'agent-' || (k % 40) || '/1.0',
    'read', CASE WHEN s % 3 = 0 THEN 'agenda' ELSE 'appointment' END,
    CASE WHEN s % 50 = 0 THEN 'not-found' ELSE 'allowed' END,
    false, s, 0, 'req-' || s
FROM generate_series(1, $1::bigint) s, LATERAL (SELECT (s * 2654435761) % 4294967296 % 5000 AS k) h
"""
_FILL_ITEMS = f"""
INSERT INTO {ITEMS}
SELECT s, o, md5('r' || r)::uuid::text, md5('p' || r % 300000)::uuid::text, true, s % 50 <> 0,
    md5('d' || r % 3000)::uuid::text, md5('e' || r % 3000 % 600)::uuid::text,
    ARRAY['start', 'end', 'status'], e.token_id, e.at
FROM {ENTRIES} e, LATERAL (SELECT e.sequence AS s) q,
    LATERAL generate_series(0, CASE WHEN s % 3 = 0 THEN 2 ELSE 0 END) o,
    LATERAL (SELECT (s * 7919 + o * 104729) % 2000000 AS r) x
"""
_FILL_LOG = f"""
INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state)
SELECT $1, e.sequence, $2, convert_to(jsonb_build_object(
    'timestamp', e.at, 'prev_hash', '', 'hash', '',
    'record', jsonb_build_object(
        'actor_kind', e.actor_kind, 'actor_id', e.actor_id, 'token_id', e.token_id,
        'integration_id', e.integration_id, 'action', e.action,
        'resource_type', e.resource_type, 'outcome', e.outcome, 'at', e.at,
        'client_ip', e.client_ip, 'user_agent', e.user_agent, 'as_of', e.as_of,
        'request_id', e.request_id,
        'record_ids', (SELECT jsonb_agg(i.record_id) FROM {ITEMS} i WHERE i.sequence = e.sequence),
        'items', (SELECT jsonb_agg(jsonb_build_object('record_id', i.record_id,
            'patient_id', i.patient_id, 'identified', true, 'fields', i.fields))
            FROM {ITEMS} i WHERE i.sequence = e.sequence)))::text, 'UTF8')
FROM {ENTRIES} e WHERE e.token_id = '{SCOPED}'
"""


async def fill(pool: asyncpg.Pool, n: int) -> dict[str, float]:
    """The index tables with n entries, indexed and vacuumed; seconds per step."""
    projection = AccessIndexProjection()
    tables = {"entries": ENTRIES, "items": ITEMS}
    ddl = projection.ddl(tables)
    steps: dict[str, float] = {}

    async def step(name: str, work: Callable[[Any], Awaitable[Any]]) -> None:
        began = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute("SET statement_timeout = 0")
            await work(conn)
            await conn.execute("RESET ALL")
        steps[name] = time.perf_counter() - began
        say(f"    {name}: {steps[name]:.0f} s")

    async def tables_only(conn: asyncpg.Connection) -> None:
        await conn.execute(f"DROP TABLE {ENTRIES}, {ITEMS}")
        for statement in ddl:
            if statement.startswith("CREATE TABLE"):
                await conn.execute(statement)

    async def indexes(conn: asyncpg.Connection) -> None:
        for statement in ddl:
            if statement.startswith("CREATE INDEX"):
                await conn.execute(statement, timeout=LONG)

    await step("tables", tables_only)
    await step("entries", lambda c: c.execute(_FILL_ENTRIES, n, START, SHARE, timeout=LONG))
    await step("items", lambda c: c.execute(_FILL_ITEMS, timeout=LONG))
    await step("indexes", indexes)
    await step("vacuum", lambda c: c.execute(f"VACUUM ANALYZE {ENTRIES}, {ITEMS}", timeout=LONG))
    topic = get_topic(AccessRecorded)
    await step("log", lambda c: c.execute(_FILL_LOG, LEDGER_ID, topic, timeout=LONG))
    return steps


async def timed(work: Awaitable[Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await work
    return (time.perf_counter() - began) * 1000.0, result


async def bench_access_index(server: str, cfg: Config) -> list[Result]:
    n = cfg.index_entries
    say(f"\n[i8-1] scope record list: one token, one day, {n:,} indexed access entries")
    async with fresh_database(server, "access_index") as url:
        pool = await open_pool(url, Settings(pool_min=2, pool_max=4))
        try:
            steps = await fill(pool, n)
            sizes: Any = await pool.fetchrow(
                f"SELECT (SELECT count(*) FROM {ITEMS}), pg_total_relation_size('{ENTRIES}'), "
                f"pg_total_relation_size('{ITEMS}')"
            )
            read = PostgresReadModels(pool)
            rng = random.Random(8)
            ours: list[float] = []
            raw: list[float] = []
            pages: list[float] = []
            patients: list[float] = []
            joined: list[float] = []
            listed = 0
            for sample in range(cfg.index_samples):
                since = START + timedelta(days=rng.randrange(DAYS))
                query = LedgerQuery(
                    token_ids=frozenset({SCOPED}), since=since, until=since + timedelta(days=1)
                )
                sides = [
                    (ours, records(pool, query)),
                    (raw, pool.fetch(RAW, SCOPED, query.since, query.until)),
                ]
                for latencies, work in sides if sample % 2 else reversed(sides):
                    ms, found = await timed(work)
                    latencies.append(ms)
                    if latencies is ours:
                        listed = len(found)
                if sample == 0:  # the same answer, or the comparison means nothing
                    mine = {r for r, _ in await records(pool, query)}
                    theirs = {r[0] for r in await pool.fetch(RAW, SCOPED, since, query.until)}
                    if mine != theirs:
                        raise AssertionError("the record list differs from the raw query's")
                ms, _ = await timed(pool.fetch(JOINED, SCOPED, since, query.until))
                joined.append(ms)
                ms, page = await timed(read.ledger_entries(query, fresh=False))
                pages.append(ms)
                patient = page[0][1].items[0].patient_id if page else ""
                ms, _ = await timed(
                    read.ledger_entries(LedgerQuery(patient_ids=frozenset({patient})), fresh=False)
                )
                patients.append(ms)
        finally:
            await pool.close()
    fill_text = ", ".join(f"{k} {v:.0f} s" for k, v in steps.items())
    notes = (
        f"{n:,} entries and {sizes[0]:,} items indexed ({sizes[1] / 2**30:.1f} + "
        f"{sizes[2] / 2**30:.1f} GiB), {DAYS} days; the token: {n // SHARE // DAYS:,} entries a "
        f"day, {listed:,} records in the last day listed; {cfg.index_samples} days sampled; "
        f"p50 ours {percentile(ours, 50):.1f} ms, raw {percentile(raw, 50):.1f} ms; through the "
        f"entries and a join instead p50 {percentile(joined, 50):.1f} ms, p99 "
        f"{percentile(joined, 99):.1f} ms; its first "
        f"500 entries read back from the log p99 {percentile(pages, 99):.1f} ms; every entry "
        f"naming one patient p99 {percentile(patients, 99):.1f} ms; fill: {fill_text}"
    )
    return [
        Result(
            "[i8-1] scope record list (1 token, 1 day) p99",
            percentile(ours, 99),
            percentile(raw, 99),
            "raw indexed query p99",
            "ms",
            None,
            notes,
            ceiling=50.0,
        )
    ]
