"""The sharded ledger's anchors, `verify_all`, and a write appended with its entry.

On real PostgreSQL: anchors commit every shard's head and chain among
themselves; cutting a shard back or rewriting it after an anchor is found;
rewriting everything, anchors included, is found against the anchor file;
a write and its access entry are in the log together or not at all.
"""

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent

from domain.ledger import (
    ANCHOR_ID,
    GENESIS,
    AccessRecord,
    AccessRecorded,
    LedgerAnchored,
    link,
    shard_id,
)
from infra.codec import TypedMapper
from infra.commands.verify import verify_all
from infra.eventstore import EventStore
from infra.ledger import (
    Ledger,
    LedgerUnavailable,
    UnreadableEntry,
    UnwritableEntry,
    Verified,
    anchor_now,
    read_anchors,
    read_chain,
    verify_ledger,
    verify_ledger_after,
)
from infra.schema import SCHEMA
from services.ports import Metadata, VersionConflict
from tests.integration.test_ledger import access as ledger_entry
from tests.integration.test_ledger import inversions

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
META = Metadata(actor_kind="admin", actor_id="test")


def access(n: int, actor: str = "practitioner") -> AccessRecord:
    """An entry of test_ledger's kind; by a practitioner unless told (the tamper test
    rewrites that)."""
    return ledger_entry(n, actor)


async def spread(pool: asyncpg.Pool, count: int = 40) -> list[int]:
    """`count` entries written at once (so over several shards); the shards used."""
    ledger = Ledger(EventStore(pool), max_batch=4, anchor_interval=None)
    await asyncio.gather(*(ledger.record(access(n)) for n in range(count)))
    await ledger.close()
    shards = sorted({e.shard for e in await read_chain(pool)})
    assert len(shards) > 1, shards
    return shards


async def rewrite_shard(pool: asyncpg.Pool, shard: int, keep: int) -> None:
    """Keep `keep` entries of `shard` and re-chain new, properly hashed ones after them."""
    entries = [e for e in await read_chain(pool) if e.shard == shard]
    head = entries[keep - 1].hash if keep else GENESIS
    forged = [dataclasses.replace(e.record, actor_id="forger") for e in entries[keep:]]
    mapper = TypedMapper()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version > $2",
            shard_id(shard),
            keep,
        )
        for n, (record, (prev, digest)) in enumerate(
            zip(forged, link(head, forged), strict=True), start=keep + 1
        ):
            stored = mapper.to_stored_event(
                AccessRecorded(
                    originator_id=shard_id(shard),
                    originator_version=n,
                    timestamp=T0,
                    record=record,
                    prev_hash=prev,
                    hash=digest,
                )
            )
            await conn.execute(
                f"INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state) "
                "VALUES ($1, $2, $3, $4)",
                stored.originator_id,
                stored.originator_version,
                stored.topic,
                stored.state,
            )


# -- anchors --------------------------------------------------------------------


async def test_an_anchor_commits_every_shards_head_chains_on_and_goes_to_the_file(
    pool, tmp_path: Path
):
    shards = await spread(pool)
    file = tmp_path / "anchors.jsonl"

    first = await anchor_now(pool, file=file)
    assert first is not None and first.originator_version == 1 and first.prev_hash == GENESIS
    entries = await read_chain(pool)
    heads = {s: max((e.version, e.hash) for e in entries if e.shard == s) for s in shards}
    assert {h.shard: (h.version, h.hash) for h in first.heads} == heads
    # Nothing moved: a periodic anchor is skipped, an asked-for one is not.
    assert await anchor_now(pool, file=file, force=False) is None
    second = await anchor_now(pool, file=file)
    assert second is not None and second.prev_hash == first.hash

    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert [line["anchor"] for line in lines] == [1, 2]
    assert lines[0]["hash"] == first.hash
    assert lines[0]["heads"] == [list(h) for h in first.heads]
    anchors = await read_anchors(pool)
    assert all(isinstance(a, LedgerAnchored) for a in anchors)
    assert [
        a.version if isinstance(a, UnreadableEntry) else a.originator_version for a in anchors
    ] == [1, 2]

    report = await verify_all(pool, file)
    assert report.intact, report.lines()
    assert report.lines()[0] == f"access ledger intact: {len(entries)} entries, hash chain verified"
    assert report.anchors == 2 and report.external == 2
    assert sum(report.shards.values()) == len(entries)


async def test_a_ledger_anchors_by_itself_every_interval(pool, tmp_path: Path):
    file = tmp_path / "anchors.jsonl"
    ledger = Ledger(EventStore(pool), anchor_interval=0.2, anchor_file=file)
    try:
        await ledger.record(access(1))
        async with asyncio.timeout(5):
            while not (await read_anchors(pool)):  # noqa: ASYNC110 (polling the database)
                await asyncio.sleep(0.05)
    finally:
        await ledger.close()
    anchors = await read_anchors(pool)
    assert isinstance(anchors[0], LedgerAnchored)
    assert [tuple(h) for h in anchors[0].heads] == [(0, 1, (await read_chain(pool))[0].hash)]
    assert json.loads(file.read_text().splitlines()[0])["anchor"] == 1


async def test_two_processes_anchoring_at_once_keep_one_anchor_chain(db_url, pool):
    await spread(pool)
    other = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        made = await asyncio.gather(*(anchor_now(p) for p in (pool, other, pool, other)))
    finally:
        await other.close()
    assert sum(a is not None for a in made) >= 1
    assert (await verify_all(pool)).intact


async def test_a_shard_cut_back_after_an_anchor_is_found(pool):
    shards = await spread(pool)
    await anchor_now(pool)
    victim = shards[-1]
    await pool.execute(
        f"""DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version =
            (SELECT max(originator_version) FROM {SCHEMA}.events WHERE originator_id = $1)""",
        shard_id(victim),
    )
    assert await verify_ledger(pool) is None  # the chain alone cannot tell

    report = await verify_all(pool)
    assert not report.intact
    assert report.lines()[0].startswith(f"access ledger TAMPERED: shard {victim} entry #")
    assert "cut back" in report.lines()[0]


async def test_a_shard_rewritten_after_an_anchor_is_found(pool):
    shards = await spread(pool)
    await anchor_now(pool)
    await rewrite_shard(pool, shards[0], keep=1)
    assert await verify_ledger(pool) is None  # a well-forged chain

    report = await verify_all(pool)
    assert not report.intact and "rewritten" in report.lines()[0], report.lines()
    assert f"shard {shards[0]}" in report.lines()[0]


async def test_everything_rewritten_anchors_included_is_found_only_against_the_file(
    pool, tmp_path: Path
):
    shards = await spread(pool)
    file = tmp_path / "anchors.jsonl"
    await anchor_now(pool, file=file)
    # The forger rewrites a shard and the anchors too, then anchors afresh.
    await rewrite_shard(pool, shards[0], keep=0)
    await pool.execute(f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1", ANCHOR_ID)
    await anchor_now(pool)

    assert (await verify_all(pool)).intact  # self-consistent
    report = await verify_all(pool, file)
    assert not report.intact
    assert "external anchor #1 differs" in report.lines()[0]


async def test_anchors_cut_off_the_end_are_found_against_the_file(pool, tmp_path: Path):
    await spread(pool)
    file = tmp_path / "anchors.jsonl"
    for _ in range(3):
        await anchor_now(pool, file=file)
    await pool.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version = 3",
        ANCHOR_ID,
    )
    assert (await verify_all(pool)).intact
    report = await verify_all(pool, file)
    assert not report.intact and "external anchor #3 is not in the database" in report.lines()[0]


async def test_an_altered_anchor_and_a_bad_anchor_file_line_are_findings(pool, tmp_path: Path):
    await spread(pool)
    await anchor_now(pool)
    await anchor_now(pool)
    await pool.execute(
        f"UPDATE {SCHEMA}.events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        "'\"heads\":[[0,', '\"heads\":[[0,1'), 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = 1",
        ANCHOR_ID,
    )
    file = tmp_path / "anchors.jsonl"
    file.write_text("not json\n")
    report = await verify_all(pool, file)
    assert not report.intact
    text = "\n".join(report.lines())
    assert "anchor #1 was altered" in text and "line 1 is not an anchor" in text


async def test_a_tampered_entry_is_named_by_shard_and_version(pool):
    shards = await spread(pool)
    victim = shards[1]
    await pool.execute(
        f"UPDATE {SCHEMA}.events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        "'practitioner-', 'intruder-'), 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = 2",
        shard_id(victim),
    )
    report = await verify_all(pool)
    assert report.lines()[0] == (
        f"access ledger TAMPERED: first bad entry is shard {victim} #2 (altered): "
        "its record does not match its hash"
    )


async def test_incremental_verification_is_per_shard(pool):
    shards = await spread(pool)
    finding, verified = await verify_ledger_after(pool, Verified())
    assert finding is None and verified.version == 40
    assert {s for s, _, _ in verified.shards} == set(shards)
    await spread(pool, 12)
    finding, later = await verify_ledger_after(pool, verified)
    assert finding is None and later.version == 52

    await pool.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version = 1",
        shard_id(shards[-1]),
    )
    finding, kept = await verify_ledger_after(pool, Verified())
    assert finding is not None and (finding.shard, finding.kind) == (shards[-1], "deleted")
    assert kept == Verified()


# -- a write and its entry in one statement -------------------------------------


def thing(version: int = 1, aggregate=None) -> StoredEvent:
    return StoredEvent(aggregate or uuid4(), version, "tests.things:Thing.Made", b"{}")


async def count(pool: asyncpg.Pool, topic: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.events WHERE topic = $1", topic))


async def test_a_write_and_its_entry_commit_together(pool):
    ledger = Ledger(EventStore(pool), anchor_interval=None)
    try:
        position = await ledger.append_with([thing(), thing()], META, None, access(1))
        chain = await read_chain(pool)
        assert [e.record for e in chain] == [access(1)] and chain[0].sequence == position
        rows = await pool.fetch(f"SELECT tx FROM {SCHEMA}.events")
        assert len(rows) == 3 and len({r[0] for r in rows}) == 1  # one transaction
    finally:
        await ledger.close()


async def test_a_write_that_loses_its_race_leaves_neither_event_nor_entry(pool):
    ledger = Ledger(EventStore(pool), anchor_interval=None)
    taken = uuid4()
    try:
        await ledger.append_with([thing(1, taken)], META, None, access(1))
        with pytest.raises(VersionConflict):
            await ledger.append_with([thing(1, taken)], META, None, access(2))
        # The shard is not at fault: its next entry follows on.
        await ledger.record(access(3))
    finally:
        await ledger.close()
    assert [e.record for e in await read_chain(pool)] == [access(1), access(3)]
    assert await count(pool, "tests.things:Thing.Made") == 1
    assert await verify_ledger(pool) is None


async def test_an_unwritable_entry_stores_no_write(pool):
    ledger = Ledger(EventStore(pool), anchor_interval=None)
    try:
        with pytest.raises(UnwritableEntry):
            await ledger.append_with(
                [thing()], META, None, dataclasses.replace(access(1), user_agent="bot\udcff")
            )
    finally:
        await ledger.close()
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.events") == 0


async def test_when_the_entry_cannot_be_stored_the_write_is_not_either(pool):
    # The database refuses every access entry (a fault on the ledger's part only).
    await pool.execute(
        f"""CREATE FUNCTION {SCHEMA}.refuse_entries() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.topic LIKE '%AccessRecorded' THEN RAISE EXCEPTION 'no entries'; END IF;
        RETURN NEW; END $$;
        CREATE TRIGGER refuse_entries BEFORE INSERT ON {SCHEMA}.events
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_entries();"""
    )
    ledger = Ledger(EventStore(pool), anchor_interval=None)
    try:
        with pytest.raises((LedgerUnavailable, asyncpg.PostgresError)):
            await ledger.append_with([thing()], META, None, access(1))
        with pytest.raises(LedgerUnavailable):
            await ledger.record(access(2))
    finally:
        await ledger.close()
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.events") == 0


async def test_writes_of_two_processes_on_one_shard_retry_and_stay_whole(db_url, pool):
    other = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    # Two writers on one chain, on purpose and for the whole test (in service only
    # a lapsed lease does this, briefly): each write is a coin toss against the other
    # process's, so ten losses in a row happened on a loaded machine (CI, 1 run in
    # about 30). The test is about retrying to a whole chain, not that budget.
    twin = dict(shards=1, holder="twin", anchor_interval=None, max_attempts=200)
    first = Ledger(EventStore(pool), **twin)
    second = Ledger(EventStore(other), **twin)
    try:
        await first.record(access(100))  # both lease shard 0, one after the other
        await second.record(access(100, "b"))
        assert first.held == second.held == [0]
        await asyncio.gather(
            *(first.append_with([thing()], META, None, access(n)) for n in range(30)),
            *(second.append_with([thing()], META, None, access(n, "b")) for n in range(30)),
        )
    finally:
        await first.close()
        await second.close()
        await other.close()
    chain = await read_chain(pool)
    assert [e.version for e in chain] == list(range(1, 63))
    assert await count(pool, "tests.things:Thing.Made") == 60
    assert await verify_ledger(pool) is None


async def test_writes_and_reads_of_two_processes_become_visible_in_sequence_order(db_url, pool):
    """As test_ledger's reads-only case, with writes (each one statement in
    autocommit, its lock first) mixed with group-committed read entries: a
    reader paging by sequence never sees an entry appear below one it saw."""
    other = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    first, second = Ledger(EventStore(pool)), Ledger(EventStore(other))
    try:
        for _ in range(3):
            await asyncio.gather(
                *(first.append_with([thing()], META, None, access(n)) for n in range(60)),
                *(second.append_with([thing()], META, None, access(n, "b")) for n in range(60)),
                *(first.record(access(n, "c")) for n in range(60)),
                *(second.record(access(n, "d")) for n in range(60)),
            )
    finally:
        await first.close()
        await second.close()
        await other.close()
    assert await inversions(pool) == 0
    assert await count(pool, "tests.things:Thing.Made") == 360
    assert await verify_ledger(pool) is None
