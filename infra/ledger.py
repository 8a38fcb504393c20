"""The access ledger on the event store: sharded, group-committed, fail-closed, verifiable.

The ledger is several hash chains, shards (domain/ledger.py). A process
leases `shards` of them in `carnet.ledger_shards` (renewed in the background,
released on close; an expired lease, a dead process's, is taken over before
a new shard number is made, so the count of shards stays bounded by the peak
of processes at once). Each of its concurrent writes checks a free shard out
and back in, so it has up to `shards` ledger statements in flight and no two
of them on one chain. Correctness does not rest on the lease: the unique
(originator_id, originator_version) constraint keeps each chain linear, and
a conflict on a shard (another process holding it after our lease lapsed)
reloads that shard's head and chains onto it.

`Ledger.record` answers only once the entry is committed, with its sequence:
the entry event's log position, unique across shards. A lone entry goes at
once when a shard is free; what arrives while every shard is busy shares the
next INSERT (at most `max_batch` rows). `append_with` appends a write's
events and its entry in one statement: both are in the log or neither is.

A batch fails as a whole (one INSERT), so a record that cannot be encoded
(a lone surrogate from a header, say) must never join one: `record` encodes
each record alone first and refuses only that caller (`UnwritableEntry`).
Everything the INSERT itself can fail on is the database's state, not one
entry's content, and fails the batch: each caller gets LedgerUnavailable.

Anchors (`anchor_now`) commit every shard's head in their own chain, and are
published outside the database: the relay sends every event to NATS, and a
configured file gets each anchor as one fsynced JSON line.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.persistence import StoredEvent

from domain.ledger import (
    ANCHOR_ID,
    GENESIS,
    LEDGER_ID,
    AccessRecord,
    AccessRecorded,
    ChainVerifier,
    Entry,
    Finding,
    LedgerAnchored,
    ShardHead,
    anchor_hash,
    chain_hash,
    link,
    shard_id,
)
from infra.codec import TypedMapper
from infra.deadlines import bounded
from infra.eventstore import EventStore, ordered_append
from infra.metrics import (
    LEDGER_BATCH_ENTRIES,
    LEDGER_ENTRIES,
    LEDGER_FAILURES,
    LEDGER_WRITE_DURATION,
    VERSION_CONFLICTS,
)
from infra.pgerrors import database_unavailable
from infra.schema import SCHEMA
from services.ports import Idempotency, LedgerUnavailable, Metadata, Unavailable, VersionConflict

__all__ = [
    "Ledger",
    "LedgerUnavailable",
    "UnwritableEntry",
    "Verified",
    "anchor_now",
    "read_chain",
    "verify_ledger",
    "verify_ledger_after",
]

log = logging.getLogger("carnet.ledger")

SHARDS = f"{SCHEMA}.ledger_shards"
_META = Metadata(actor_kind="system", actor_id="access-ledger")
_meta_json = msgspec.json.Encoder()
_HEAD = f"""
SELECT originator_version, topic, state FROM {SCHEMA}.events
WHERE originator_id = $1 ORDER BY originator_version DESC LIMIT 1
"""
_CHAIN = f"""
SELECT originator_version, topic, state, position FROM {SCHEMA}.events
WHERE originator_id = $1 AND originator_version >= $2 ORDER BY originator_version
"""
# Ledger batches take their positions and commit one at a time, across every
# shard and process: the lock is taken before the rows get their positions and
# transaction id, and released after the commit. So entries become visible in
# sequence order (and in the (tx, position) order the index applies), and a
# reader paging by sequence never sees an entry appear below one it already saw.
# Only the INSERT and its commit are serialised; chaining and encoding are not.
ORDER_LOCK = 72810005
_ORDERED = f"SELECT pg_advisory_xact_lock({ORDER_LOCK})"
_APPEND = ordered_append(_ORDERED)  # a write's events and its entry, the lock first
# A batch of one shard's entries; each row's position is its entry's sequence.
_INSERT = f"""
WITH ordered AS ({_ORDERED})
INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state, metadata)
SELECT $1, u.version, u.topic, u.state, $4::jsonb
FROM ordered, unnest($2::int[], $3::text[], $5::bytea[]) AS u(version, topic, state)
RETURNING originator_version, position
"""
# Expired (or never held, or already ours) shards first, lowest numbers first.
_TAKE = f"""
WITH free AS (
    SELECT shard FROM {SHARDS}
    WHERE holder IS NULL OR holder = $1 OR lease_until < now()
    ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE {SHARDS} s SET holder = $1, lease_until = now() + make_interval(secs => $3)
FROM free WHERE s.shard = free.shard RETURNING s.shard
"""
_CREATE = f"""
INSERT INTO {SHARDS} (shard, holder, lease_until)
SELECT coalesce(max(shard) + 1, 0), $1, now() + make_interval(secs => $2) FROM {SHARDS}
ON CONFLICT (shard) DO NOTHING RETURNING shard
"""
_RENEW = f"""
UPDATE {SHARDS} SET holder = $1, lease_until = now() + make_interval(secs => $3)
WHERE shard = ANY($2::int[]) AND (holder = $1 OR holder IS NULL OR lease_until < now())
RETURNING shard
"""
_RELEASE = f"""
UPDATE {SHARDS} SET holder = NULL, lease_until = '-infinity'
WHERE holder = $1 AND shard = ANY($2::int[])
"""


@dataclass(eq=False)
class _Waiting:
    record: AccessRecord
    done: asyncio.Future[int]


@dataclass(eq=False)
class _Shard:
    number: int
    id: UUID
    head: tuple[int, str] | None = None  # None: read it from the table first
    lost: bool = False  # its lease went to another process: not checked out again


class Ledger:
    """This process's writer of access entries (an `AccessLedger`), on leased shards."""

    def __init__(
        self,
        store: EventStore,
        *,
        shards: int = 4,
        lease_seconds: float = 30.0,
        interval: float = 0.002,
        max_batch: int = 500,
        write_timeout: float = 5.0,
        max_attempts: int = 10,
        disabled: bool = False,
        mapper: TypedMapper | None = None,
        anchor_interval: float | None = 60.0,
        anchor_file: Path | None = None,
        holder: str | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError("a ledger needs at least one shard")
        self.store = store
        self.shards = shards
        self.lease_seconds = lease_seconds
        self.interval = interval  # the backoff unit after a conflict on a shard
        self.max_batch = max_batch
        self.write_timeout = write_timeout
        self.max_attempts = max_attempts
        self.disabled = disabled  # the benchmark's baseline: nothing is written
        self.mapper = mapper or TypedMapper()
        self.anchor_interval = anchor_interval
        self.anchor_file = anchor_file
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pending: list[_Waiting] = []
        self._free: asyncio.Queue[_Shard] | None = None
        self._held: dict[int, _Shard] = {}
        self._leasing = asyncio.Lock()
        self._dispatcher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def held(self) -> list[int]:
        """The shard numbers this process holds now."""
        return sorted(n for n, s in self._held.items() if not s.lost)

    async def record(self, record: AccessRecord) -> int:
        """The entry's sequence (its log position), once it is durable.

        Raises LedgerUnavailable when it cannot be made durable, and
        UnwritableEntry when this record cannot be stored at all: the caller
        must then disclose nothing. A caller cancelled while waiting still
        has its entry written; recording an access that did not happen is
        the safe mistake.
        """
        if self.disabled:
            return 0
        self._encodable(record)
        if self._closing:
            raise LedgerUnavailable("the access ledger is closed")
        waiting = _Waiting(record, asyncio.get_running_loop().create_future())
        self._pending.append(waiting)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        return await waiting.done

    async def append_with(
        self,
        stored: Sequence[StoredEvent],
        meta: Metadata,
        idempotency: Idempotency | None,
        record: AccessRecord,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        """Append a write's events and its access entry in one statement; the last position.

        VersionConflict if the write's own events lost a race, StaleRead if an
        aggregate in `unchanged` moved on (the caller retries either, with a
        new entry); a conflict on the shard is ours to retry. Nothing is in
        the log unless everything is.
        """
        if self.disabled:
            return await self.store.append(stored, meta, idempotency, unchanged)
        self._encodable(record)
        shard = await self._checkout()
        try:
            async with self.store.pool.acquire() as conn:
                position = await bounded(
                    self._append_together(
                        conn, shard, stored, meta, idempotency, record, unchanged
                    ),
                    self.write_timeout,
                    "the access ledger",
                )
        except (VersionConflict, Unavailable):
            raise
        except Exception as e:
            shard.head = None  # the statement may have committed
            LEDGER_FAILURES.inc()
            raise LedgerUnavailable(f"the access ledger cannot be written: {e!r}") from e
        finally:
            self._checkin(shard)
        self.store.notifier.poke()
        LEDGER_ENTRIES.inc()
        return position

    async def append_with_on(
        self, conn: Any, stored: Sequence[StoredEvent], meta: Metadata, record: AccessRecord
    ) -> int:
        """`append_with` on a connection in the caller's transaction (the token index's)."""
        if self.disabled:
            return await EventStore.append_on(conn, stored, meta)
        self._encodable(record)
        shard = await self._checkout()
        try:
            position = await self._append_together(conn, shard, stored, meta, None, record)
        except BaseException:
            shard.head = None
            raise
        finally:
            self._checkin(shard)
        LEDGER_ENTRIES.inc()
        return position

    async def close(self) -> None:
        """Write what is pending, stop renewing and anchoring, release the shards."""
        self._closing = True
        if self._dispatcher is not None:
            with contextlib.suppress(Exception):
                await self._dispatcher
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self._held:
            try:
                await bounded(
                    self.store.pool.execute(_RELEASE, self.holder, list(self._held)),
                    self.write_timeout,
                    "releasing the ledger's shards",
                )
            except Exception as e:  # they expire by themselves
                log.warning("could not release the ledger's shards: %r", e)
            self._held.clear()

    # -- writing ---------------------------------------------------------

    def _encodable(self, record: AccessRecord) -> None:
        try:
            # The same encoder the batch uses: what passes here cannot fail it.
            self.mapper.transcoder.encode(record)
        except Exception as e:
            LEDGER_FAILURES.inc()
            log.warning("access entry refused, it cannot be encoded: %r", e)
            raise UnwritableEntry(f"the access entry cannot be encoded: {e}") from e

    async def _dispatch(self) -> None:
        """Hand what is pending to free shards, one batch per shard, until nothing is left."""
        try:
            while self._pending:
                shard = await self._checkout()
                if not self._pending:
                    self._checkin(shard)
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                task = asyncio.get_running_loop().create_task(self._write(shard, batch))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        except BaseException as e:
            self._refuse(self._pending, e)
            self._pending.clear()
            if isinstance(e, asyncio.CancelledError):
                raise

    async def _checkout(self) -> _Shard:
        """A free shard of ours, leasing them first; LedgerUnavailable if none comes in time."""
        try:
            async with asyncio.timeout(self.write_timeout):
                free = await self._leased()
                while True:
                    shard = await free.get()
                    if not shard.lost:
                        return shard
                    self._held.pop(shard.number, None)
        except TimeoutError as e:
            raise LedgerUnavailable("no access-ledger shard came free in time") from e

    def _checkin(self, shard: _Shard) -> None:
        if self._free is not None and not shard.lost:
            self._free.put_nowait(shard)
        elif shard.lost:
            self._held.pop(shard.number, None)

    async def _write(self, shard: _Shard, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        try:
            # Bounded even when PostgreSQL hangs: a timeout that waits for the
            # cancelled INSERT to clean up would hold every caller 30-60 s.
            positions = await bounded(
                self._append(shard, [w.record for w in batch]),
                self.write_timeout,
                "the access ledger",
            )
        except BaseException as e:
            # Whatever went wrong, the entries are not known to be durable.
            # The head is not known either: the INSERT may have committed.
            shard.head = None
            LEDGER_FAILURES.inc()
            log.warning("access ledger write of %d entries failed: %r", len(batch), e)
            self._refuse(batch, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            self._checkin(shard)
        LEDGER_WRITE_DURATION.observe(time.perf_counter() - started)
        LEDGER_BATCH_ENTRIES.observe(len(batch))
        LEDGER_ENTRIES.inc(len(batch))
        for waiting, position in zip(batch, positions, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(position)

    @staticmethod
    def _refuse(batch: list[_Waiting], cause: BaseException) -> None:
        for waiting in batch:
            if not waiting.done.done():
                error = LedgerUnavailable(f"the access ledger cannot be written: {cause!r}")
                error.__cause__ = cause
                waiting.done.set_exception(error)

    def _chained(self, shard: _Shard, records: Sequence[AccessRecord]) -> list[AccessRecorded]:
        assert shard.head is not None
        head_version, head_hash = shard.head
        now = datetime.now(UTC)
        return [
            AccessRecorded(
                originator_id=shard.id,
                originator_version=head_version + n,
                timestamp=now,
                record=record,
                prev_hash=prev_hash,
                hash=digest,
            )
            for n, (record, (prev_hash, digest)) in enumerate(
                zip(records, link(head_hash, records), strict=True), start=1
            )
        ]

    async def _append(self, shard: _Shard, records: list[AccessRecord]) -> list[int]:
        """Chain the records onto the shard's head and insert them; their positions."""
        for attempt in range(self.max_attempts):
            if shard.head is None:
                shard.head = await self._read_head(shard.id)
            events = self._chained(shard, records)
            stored = [self.mapper.to_stored_event(e) for e in events]
            try:
                rows = await self.store.pool.fetch(
                    _INSERT,
                    shard.id,
                    [s.originator_version for s in stored],
                    [s.topic for s in stored],
                    _meta_json.encode(_META).decode(),
                    [s.state for s in stored],
                )
            except asyncpg.UniqueViolationError:
                # Another process wrote this shard: chain onto its head instead.
                shard.head = None
                await asyncio.sleep(random.uniform(0, self.interval * (attempt + 1)))
                continue
            shard.head = (events[-1].originator_version, events[-1].hash)
            self.store.notifier.poke()
            at = {r[0]: int(r[1]) for r in rows}
            return [at[e.originator_version] for e in events]
        raise LedgerUnavailable(f"lost the race for shard {shard.number} {self.max_attempts} times")

    async def _append_together(
        self,
        conn: Any,
        shard: _Shard,
        stored: Sequence[StoredEvent],
        meta: Metadata,
        idempotency: Idempotency | None,
        record: AccessRecord,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        for attempt in range(self.max_attempts):
            if shard.head is None:
                shard.head = await self._read_head(shard.id, conn)
            (entry,) = self._chained(shard, [record])
            rows = [*stored, self.mapper.to_stored_event(entry)]
            try:
                if not conn.is_in_transaction():
                    # One statement in autocommit: the ordering lock is held for
                    # the INSERT and its commit only, never across a round trip.
                    position = await EventStore.append_on(
                        conn, rows, meta, idempotency, _APPEND, unchanged
                    )
                else:
                    # A savepoint in the caller's transaction: a lost race on the
                    # shard must not abort it. The lock is held to its commit.
                    async with conn.transaction():
                        await conn.execute(_ORDERED)
                        position = await EventStore.append_on(
                            conn, rows, meta, idempotency, unchanged=unchanged
                        )
            except asyncpg.UniqueViolationError as e:
                if str(shard.id) not in (e.detail or ""):
                    VERSION_CONFLICTS.inc()
                    raise VersionConflict(str(e)) from None
                shard.head = None
                await asyncio.sleep(random.uniform(0, self.interval * (attempt + 1)))
                continue
            except Exception as e:
                if database_unavailable(e):
                    raise Unavailable(str(e)) from e
                raise
            shard.head = (entry.originator_version, entry.hash)
            return position
        raise LedgerUnavailable(f"lost the race for shard {shard.number} {self.max_attempts} times")

    async def _read_head(self, shard: UUID, conn: Any = None) -> tuple[int, str]:
        row = await (conn or self.store.pool).fetchrow(_HEAD, shard)
        if row is None:
            return 0, GENESIS
        event = decode(self.mapper, row[0], row[1], row[2], shard)
        return event.originator_version, event.hash

    # -- leases ----------------------------------------------------------

    async def _leased(self) -> asyncio.Queue[_Shard]:
        """The queue of free shards, leasing `shards` of them the first time."""
        if self._free is not None:
            return self._free
        async with self._leasing:
            if self._free is None:
                numbers = await self._take(self.shards)
                # Last in, first out: one caller at a time keeps to one shard
                # (the lowest), and the others wait idle for concurrency.
                free: asyncio.Queue[_Shard] = asyncio.LifoQueue()
                for n in sorted(numbers, reverse=True):
                    self._held[n] = _Shard(n, shard_id(n))
                    free.put_nowait(self._held[n])
                self._free = free
                self._start_background()
        return self._free

    async def _take(self, wanted: int) -> list[int]:
        """Lease `wanted` shards: expired ones first, then new numbers."""
        async with self.store.pool.acquire() as conn:
            taken = [r[0] for r in await conn.fetch(_TAKE, self.holder, wanted, self.lease_seconds)]
            attempts = 0
            while len(taken) < wanted and attempts < 4 * wanted:
                attempts += 1  # two processes made the same number: try the next
                made = await conn.fetchval(_CREATE, self.holder, self.lease_seconds)
                if made is not None:
                    taken.append(made)
        if not taken:
            raise LedgerUnavailable("could not lease an access-ledger shard")
        return taken

    def _start_background(self) -> None:
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._renewing()))
        if self.anchor_interval is not None and self.anchor_interval > 0:
            self._background.append(loop.create_task(self._anchoring(self.anchor_interval)))

    async def _renewing(self) -> None:
        """Renew the leases a few times per TTL; a lease lost is replaced."""
        while not self._closing:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await bounded(self._renew(), self.write_timeout, "renewing the ledger's shards")
            except asyncpg.InterfaceError:
                return  # the pool is closed: this process is going away
            except Exception as e:
                log.warning("renewing the access ledger's shards failed: %r", e)

    async def _renew(self) -> None:
        held = list(self._held)
        kept = {
            r[0] for r in await self.store.pool.fetch(_RENEW, self.holder, held, self.lease_seconds)
        }
        for n in held:
            if n not in kept and n in self._held:
                log.warning("access-ledger shard %d was taken over by another process", n)
                self._held[n].lost = True
        missing = self.shards - len([s for s in self._held.values() if not s.lost])
        if missing > 0 and self._free is not None:
            for n in await self._take(missing):
                if n not in self._held or self._held[n].lost:
                    self._held[n] = _Shard(n, shard_id(n))
                    self._free.put_nowait(self._held[n])

    async def _anchoring(self, every: float) -> None:
        """Anchor every shard's head every `every` seconds (skipped when nothing moved)."""
        while not self._closing:
            await asyncio.sleep(every)
            try:
                await bounded(
                    anchor_now(
                        self.store.pool, file=self.anchor_file, mapper=self.mapper, force=False
                    ),
                    self.write_timeout,
                    "anchoring the access ledger",
                )
            except asyncpg.InterfaceError:
                return
            except Exception as e:
                log.warning("anchoring the access ledger failed: %r", e)


class UnwritableEntry(ValueError):
    """This one record cannot be stored: its content is at fault, not the database.

    Only its caller gets it; the batch it would have joined is written. It is
    not LedgerUnavailable, since retrying cannot help, and it means the edge
    let through a value it should have made storable: a bug, answered 500.
    """


class UnreadableEntry(Exception):
    """A stored ledger row that is not an AccessRecorded event any more."""

    def __init__(self, version: int, detail: str, shard: int = 0) -> None:
        super().__init__(f"ledger entry {version}: {detail}")
        self.version = version
        self.detail = detail
        self.shard = shard


def decode(
    mapper: TypedMapper, version: int, topic: str, state: bytes, originator: UUID = LEDGER_ID
) -> AccessRecorded:
    try:
        event = mapper.to_domain_event(StoredEvent(originator, version, topic, state))
    except Exception as e:  # any undecodable row is, to the ledger, an altered one
        raise UnreadableEntry(version, f"its state cannot be decoded ({e})") from e
    if not isinstance(event, AccessRecorded):
        raise UnreadableEntry(version, f"it is a {type(event).__name__}, not an access entry")
    return event


# -- shards and anchors -------------------------------------------------------

_LEASED = f"SELECT shard FROM {SHARDS}"
_ANCHOR_HEAD = f"""
SELECT originator_version, topic, state FROM {SCHEMA}.events
WHERE originator_id = $1 ORDER BY originator_version DESC LIMIT 1
"""
_ANCHORS = f"""
SELECT originator_version, topic, state FROM {SCHEMA}.events
WHERE originator_id = $1 ORDER BY originator_version
"""
_HAS = f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.events WHERE originator_id = $1)"


async def shard_numbers(pool: Any, also: Sequence[int] = ()) -> list[int]:
    """Every shard that may hold entries: 0, the leased ones, `also`, and any right after.

    The lease table is not evidence (a row deleted from it must not hide a
    shard), so the numbers just past the highest known are probed in the log.
    """
    known = {0, *also}
    with contextlib.suppress(asyncpg.UndefinedTableError):
        known |= {r[0] for r in await pool.fetch(_LEASED)}
    probe = max(known) + 1
    while await pool.fetchval(_HAS, shard_id(probe)):
        known.add(probe)
        probe += 1
    return sorted(known)


async def shard_heads(pool: Any, mapper: TypedMapper | None = None) -> list[ShardHead]:
    """Every non-empty shard's last entry, by shard number."""
    mapper = mapper or TypedMapper()
    heads = []
    for n in await shard_numbers(pool):
        row = await pool.fetchrow(_HEAD, shard_id(n))
        if row is not None:
            event = decode(mapper, row[0], row[1], row[2], shard_id(n))
            heads.append(ShardHead(n, event.originator_version, event.hash))
    return heads


def anchor_line(anchor: LedgerAnchored) -> str:
    """An anchor as the one JSON line it is published as."""
    return json.dumps(
        {
            "anchor": anchor.originator_version,
            "hash": anchor.hash,
            "prev_hash": anchor.prev_hash,
            "heads": [list(h) for h in anchor.heads],
            "at": anchor.timestamp.isoformat(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _publish(path: Path, anchor: LedgerAnchored) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(anchor_line(anchor) + "\n")
        f.flush()
        os.fsync(f.fileno())


async def read_anchors(
    pool: Any, mapper: TypedMapper | None = None
) -> list[LedgerAnchored | UnreadableEntry]:
    """Every anchor in version order (UnreadableEntry for a row that is not one)."""
    mapper = mapper or TypedMapper()
    found: list[LedgerAnchored | UnreadableEntry] = []
    for row in await pool.fetch(_ANCHORS, ANCHOR_ID):
        try:
            event = mapper.to_domain_event(StoredEvent(ANCHOR_ID, row[0], row[1], row[2]))
        except Exception as e:
            found.append(UnreadableEntry(row[0], f"its state cannot be decoded ({e})"))
            continue
        if not isinstance(event, LedgerAnchored):
            found.append(UnreadableEntry(row[0], f"it is a {type(event).__name__}, not an anchor"))
            continue
        found.append(event)
    return found


async def anchor_now(
    pool: Any,
    *,
    file: Path | None = None,
    mapper: TypedMapper | None = None,
    force: bool = True,
    attempts: int = 3,
) -> LedgerAnchored | None:
    """Anchor every shard's head now; the anchor, or None if there was nothing new.

    Unless `force`, no anchor is written when the heads are those of the last
    anchor. A version conflict means another process anchored meanwhile: the
    heads are read again and anchored after it. The anchor is appended to
    `file` (one JSON line, fsynced) once it is committed.
    """
    mapper = mapper or TypedMapper()
    store = EventStore(pool)
    for _ in range(attempts):
        heads = tuple(await shard_heads(pool, mapper))
        row = await pool.fetchrow(_ANCHOR_HEAD, ANCHOR_ID)
        version, prev_hash, last_heads = 0, GENESIS, None
        if row is not None:
            last = mapper.to_domain_event(StoredEvent(ANCHOR_ID, row[0], row[1], row[2]))
            version, prev_hash = last.originator_version, last.hash
            last_heads = tuple(ShardHead(*h) for h in last.heads)
        if not force and last_heads == heads:
            return None
        anchor = LedgerAnchored(
            originator_id=ANCHOR_ID,
            originator_version=version + 1,
            timestamp=datetime.now(UTC),
            heads=heads,
            prev_hash=prev_hash,
            hash=anchor_hash(prev_hash, heads),
        )
        try:
            await store.append([mapper.to_stored_event(anchor)], _META)
        except VersionConflict:
            continue
        if file is not None:
            await asyncio.to_thread(_publish, file, anchor)
        return anchor
    return None


# -- reading and verifying ----------------------------------------------------


async def _stream(
    pool: asyncpg.Pool,
    page: int = 1000,
    mapper: TypedMapper | None = None,
    first: int = 0,
    shard: int = 0,
) -> AsyncGenerator[Entry | UnreadableEntry, None]:
    """One shard's chain in version order from version `first`, from one snapshot."""
    mapper = mapper or TypedMapper()
    sid = shard_id(shard)
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        async for row in conn.cursor(_CHAIN, sid, first, prefetch=page):
            try:
                event = decode(mapper, row[0], row[1], row[2], sid)
            except UnreadableEntry as e:
                e.shard = shard
                yield e
                continue
            yield Entry(
                event.originator_version, event.record, event.prev_hash, event.hash, shard, row[3]
            )


async def read_chain(pool: asyncpg.Pool) -> list[Entry]:
    """Every ledger entry of every shard, in sequence (log position) order.

    UnreadableEntry if one cannot be decoded.
    """
    entries = []
    for shard in await shard_numbers(pool):
        async with contextlib.aclosing(_stream(pool, shard=shard)) as chain:
            async for item in chain:
                if isinstance(item, UnreadableEntry):
                    raise item
                entries.append(item)
    return sorted(entries, key=lambda e: e.sequence)


async def verify_shard(
    pool: asyncpg.Pool, shard: int, page: int = 1000
) -> tuple[Finding | None, int]:
    """The first bad entry of one shard (None if intact), and how many entries it has."""
    verifier = ChainVerifier()
    count = 0
    async with contextlib.aclosing(_stream(pool, page, shard=shard)) as chain:
        async for item in chain:
            count += 1
            if isinstance(item, UnreadableEntry):
                verifier.feed_unreadable(item.version, item.detail)
            else:
                verifier.feed(item)
            if verifier.settled:
                break
    finding = verifier.result()
    if finding is not None:
        finding = Finding(finding.kind, finding.version, finding.detail, shard)
    return finding, count


async def verify_ledger(pool: asyncpg.Pool, page: int = 1000) -> Finding | None:
    """The first altered, deleted, inserted or reordered entry of any shard; None if intact."""
    for shard in await shard_numbers(pool):
        finding, _ = await verify_shard(pool, shard, page)
        if finding is not None:
            return finding
    return None


@dataclass(frozen=True)
class Verified:
    """How far each shard is known to be intact: shard -> (last verified version, its hash)."""

    shards: tuple[tuple[int, int, str], ...] = ()
    heads: dict[int, tuple[int, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.heads.update({s: (v, h) for s, v, h in self.shards})

    @property
    def version(self) -> int:
        """Entries verified, over every shard."""
        return sum(v for _, v, _ in self.shards)

    def of(self, shard: int) -> tuple[int, str]:
        return self.heads.get(shard, (0, GENESIS))


async def _verify_shard_after(
    pool: asyncpg.Pool, shard: int, version: int, digest: str, page: int
) -> tuple[Finding | None, tuple[int, str]]:
    last, count = (version, digest), 0
    fault: Finding | None = None
    async with contextlib.aclosing(_stream(pool, page, first=version, shard=shard)) as chain:
        async for item in chain:
            count += 1
            if isinstance(item, UnreadableEntry):
                fault = Finding("altered", item.version, item.detail, shard)
                break
            if chain_hash(item.prev_hash, item.record) != item.hash:
                fault = Finding(
                    "altered", item.version, "its record does not match its hash", shard
                )
                break
            if count == 1 and version:
                if item.version != version or item.hash != digest:
                    fault = Finding(
                        "altered", version, "it is not the entry verified before", shard
                    )
                    break
                continue
            if item.version != last[0] + 1:
                fault = Finding("deleted", last[0] + 1, f"missing: {last[0] + 1}", shard)
                break
            if item.prev_hash != last[1]:
                fault = Finding(
                    "deleted", item.version, "its link to the entry before is broken", shard
                )
                break
            last = (item.version, item.hash)
    if fault is None and version and count == 0:
        fault = Finding("deleted", version, "the chain ends before it", shard)
    return fault, last


async def verify_ledger_after(
    pool: asyncpg.Pool, verified: Verified, page: int = 1000
) -> tuple[Finding | None, Verified]:
    """Verify only what each shard appended since `verified`, and that its last entry is unchanged.

    Reads each shard's entries from its verified version on (none before it),
    so a periodic check costs what was written meanwhile, not the whole
    ledger. Answers (None, how far every shard is now verified) if intact. On
    the first fault it runs `verify_shard` over that whole shard, whose
    finding names the first bad entry exactly as `carnet verify` does, and
    answers it with `verified` as it was. What this cannot see is an entry
    before a shard's verified version altered together with every later one:
    the caller re-verifies from the start now and then (`Verified()`), and
    anchors catch it.
    """
    heads: list[tuple[int, int, str]] = []
    for shard in await shard_numbers(pool, [s for s, _, _ in verified.shards]):
        version, digest = verified.of(shard)
        fault, (now, now_hash) = await _verify_shard_after(pool, shard, version, digest, page)
        if fault is not None:
            # Classified exactly by the full verification; ours if it was rewritten whole.
            full, _ = await verify_shard(pool, shard, page)
            return full or fault, verified
        if now:
            heads.append((shard, now, now_hash))
    return None, Verified(tuple(heads))
