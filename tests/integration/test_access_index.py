"""The access index finds exactly the ledger entries a brute-force scan of the
chain finds, for every kind of filter and their combinations; pages of any
size cover them once each; rebuilt, it is the same; and no text a client sent
(or an older writer stored) stops it."""

import asyncio
import contextlib
import random
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest
from eventsourcing.utils import get_topic

from domain.ledger import LEDGER_ID, AccessRecord, AccessRecorded
from infra import access_index
from infra.access_index import IndexBehind, catch_up_index, iter_ledger, records
from infra.eventstore import EventStore
from infra.ledger import Ledger, read_chain
from infra.projection_status import statuses
from infra.projector import CHECKPOINTS, Projector
from infra.readmodels import NotCaughtUp, PostgresReadModels
from infra.schema import SCHEMA
from projections.access_index import AccessIndexProjection
from services.ports import LedgerQuery
from tests.conftest import T0
from tests.integration.access_index_support import (
    IPS,
    matches,
    names,
    random_query,
    random_record,
)
from tests.integration.test_projections import dump


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> list[tuple[int, AccessRecord]]:
    """300 random entries in the log and in the index."""
    rng = random.Random(8)
    writer = Ledger(EventStore(pool))
    await asyncio.gather(*(writer.record(random_record(rng, n)) for n in range(300)))
    await writer.close()
    await catch_up_index(pool)
    return [(e.version, e.record) for e in await read_chain(pool)]


async def test_every_filter_and_combination_finds_what_a_scan_of_the_chain_finds(pool, ledger):
    read = PostgresReadModels(pool)
    rng = random.Random(33)
    nonempty = 0
    for _ in range(150):
        query = random_query(rng)
        expected = [(s, r) for s, r in ledger if matches(query, r)]

        found = await read.ledger_entries(query)

        assert found == expected, query
        nonempty += bool(found)
    assert nonempty > 60  # the queries were not all vacuous


async def test_pages_of_any_size_cover_every_match_exactly_once(pool, ledger):
    read = PostgresReadModels(pool)
    query = LedgerQuery(token_ids=frozenset({"tok-a", "tok-b"}), not_client_ips=frozenset({IPS[0]}))
    expected = [s for s, r in ledger if matches(query, r)]
    assert len(expected) > 20
    for size in (1, 7, len(expected), len(expected) + 1):
        seen: list[int] = []
        after = 0
        while page := await read.ledger_entries(replace(query, after=after, limit=size)):
            assert len(page) <= size
            seen += [s for s, _ in page]
            after = page[-1][0]
        assert seen == expected, size


async def test_the_stream_yields_every_match_in_order_from_any_cursor(pool, ledger):
    query = LedgerQuery(outcomes=frozenset({"allowed"}), limit=3)  # the stream ignores limit
    expected = [(s, r) for s, r in ledger if matches(query, r)]

    async with contextlib.aclosing(iter_ledger(pool, query, page=16)) as stream:
        streamed = [found async for found in stream]
    middle = expected[len(expected) // 2][0]
    rest = [f async for f in iter_ledger(PostgresReadModels(pool), replace(query, after=middle))]

    assert streamed == expected
    assert rest == [(s, r) for s, r in expected if s > middle]


@pytest.mark.parametrize(
    "query",
    [
        LedgerQuery(token_ids=frozenset({"tok-c"})),  # one range of the items' token index
        LedgerQuery(
            token_ids=frozenset({"tok-c", "tok-d"}), since=T0, until=T0 + timedelta(days=3)
        ),
        LedgerQuery(token_ids=frozenset({"tok-c"}), not_client_ips=frozenset({IPS[0]})),
        LedgerQuery(actor_ids=frozenset({"pat-1"}), outcomes=frozenset({"not-found"})),
    ],
)
async def test_the_record_list_says_which_records_were_disclosed_and_which_only_tried(
    pool, ledger, query
):
    expected: dict[str, bool] = {}
    for _, r in (e for e in ledger if matches(query, e[1])):
        for record_id in names(r)["record_ids"]:
            expected[record_id] = expected.get(record_id, False) or r.outcome == "allowed"

    found = await records(pool, query)

    assert dict(found) == expected and len(found) == len(expected)
    assert False in expected.values()


async def test_a_rebuilt_index_has_the_rows_of_the_live_one(pool, ledger):
    projector = Projector(pool, AccessIndexProjection())
    live = await dump(pool, projector)
    assert len(live["entries"]) == len(ledger) and live["items"]

    await projector.rebuild()

    assert await dump(pool, projector) == live
    assert {s.name: s.lag_events for s in await statuses(pool)}["access_index"] == 0


async def test_refusals_name_what_was_asked_for_and_disclose_nothing(pool, ledger):
    rows = await pool.fetch(
        f"""SELECT e.outcome, i.disclosed, i.identified FROM {access_index.ENTRIES} e
        JOIN {access_index.ITEMS} i USING (sequence)"""
    )
    refused = [r for r in rows if r["outcome"] != "allowed"]
    assert refused and not any(r["disclosed"] or r["identified"] for r in refused)
    assert any(r["disclosed"] for r in rows if r["outcome"] == "allowed")
    # An agenda refusal of practitioner P is found by "who touched P".
    attempts = [
        (s, r)
        for s, r in ledger
        if r.outcome != "allowed" and dict(r.selectors).get("practitioner_id")
    ]
    sequence, record = attempts[0]
    asked = dict(record.selectors)["practitioner_id"]
    found = await PostgresReadModels(pool).ledger_entries(
        LedgerQuery(practitioner_ids=frozenset({asked}), outcomes=frozenset({record.outcome}))
    )
    assert sequence in [s for s, _ in found]


HOSTILE = [
    "nul\x00inside",
    "x" * 5000,  # older entries were not bounded
    "back\\slash, comma; \u202eRLO",
    "",
]


async def _raw_entry(pool: asyncpg.Pool, version: int, user_agent_json: str) -> None:
    """An entry as another writer could have stored it: JSON text the mapper never writes."""
    state = (
        '{"timestamp":"2026-12-01T07:00:00+00:00","record":{"actor_kind":"patient",'
        '"actor_id":"pat-9","action":"read","resource_type":"appointment",'
        '"record_ids":["appt-x"],"at":"2026-12-01T07:00:00+00:00",'
        f'"user_agent":"{user_agent_json}"}},"prev_hash":"","hash":""}}'
    )
    await pool.execute(
        f"INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state) "
        "VALUES ($1, $2, $3, convert_to($4, 'UTF8'))",
        LEDGER_ID,
        version,
        get_topic(AccessRecorded),
        state,
    )


async def test_hostile_user_agents_are_indexed_and_found_and_never_stop_the_index(pool):
    writer = Ledger(EventStore(pool))
    for n, agent in enumerate(HOSTILE):
        await writer.record(replace(random_record(random.Random(n), n), user_agent=agent))
    await writer.close()
    await _raw_entry(pool, len(HOSTILE) + 1, "lone \\ud800 surrogate")

    await catch_up_index(pool)

    states = {s.name: s.state for s in await statuses(pool)}
    assert states["access_index"] == "running"
    read = PostgresReadModels(pool)
    for n, agent in enumerate(HOSTILE, start=1):
        found = await read.ledger_entries(LedgerQuery(user_agents=frozenset({agent})))
        assert n in [s for s, _ in found], agent
    surrogate = await read.ledger_entries(LedgerQuery(actor_ids=frozenset({"pat-9"})))
    assert [s for s, _ in surrogate] == [len(HOSTILE) + 1]


async def test_a_search_waits_for_the_index_and_says_so_when_it_is_stopped(pool, ledger):
    read = PostgresReadModels(pool, max_wait=0.3)
    writer = Ledger(EventStore(pool))
    latest = await writer.record(random_record(random.Random(1), 999))
    await writer.close()
    query = LedgerQuery(actor_ids=frozenset({"int-1", "pat-1", "prac-1"}))

    # Nothing applies the new entry: the search does not answer without it.
    with pytest.raises(NotCaughtUp):
        await read.ledger_entries(query)
    assert latest not in [s for s, _ in await read.ledger_entries(query, fresh=False)]

    await catch_up_index(pool)
    assert latest in [s for s, _ in await read.ledger_entries(query)]

    await pool.execute(
        f"UPDATE {CHECKPOINTS} SET state = 'stopped', error = 'a bug' WHERE name = $1",
        access_index.INDEX,
    )
    with pytest.raises(IndexBehind, match="stopped"):
        await catch_up_index(pool, within=5)
