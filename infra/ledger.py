"""The access ledger on the event store: group-committed, fail-closed, verifiable.

`Ledger.record` answers only once the entry is committed. Callers that arrive
within `interval` of each other share one INSERT (at most `max_batch` rows),
so a busy process writes the ledger a few hundred times a second, not once
per request; `interval=0` batches only what arrives while a write is in
flight. Batches are written one after another; the chain head (version,
hash) is kept in memory and reloaded from the table whenever it may be stale
(after a version conflict with another process, or after any failure).

A batch fails as a whole (one INSERT), so a record that cannot be encoded
(a lone surrogate from a header, say) must never join one: `record` encodes
each record alone first and refuses only that caller (`UnwritableEntry`).
Everything the INSERT itself can fail on is the database's state, not one
entry's content, and fails the batch: each caller gets LedgerUnavailable.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from eventsourcing.persistence import StoredEvent

from domain.ledger import (
    GENESIS,
    LEDGER_ID,
    AccessRecord,
    AccessRecorded,
    ChainVerifier,
    Entry,
    Finding,
    chain_hash,
    link,
)
from infra.codec import TypedMapper
from infra.deadlines import bounded
from infra.eventstore import EventStore
from infra.metrics import (
    LEDGER_BATCH_ENTRIES,
    LEDGER_ENTRIES,
    LEDGER_FAILURES,
    LEDGER_WRITE_DURATION,
)
from infra.schema import SCHEMA
from services.ports import LedgerUnavailable, Metadata, VersionConflict

__all__ = [
    "Ledger",
    "LedgerUnavailable",
    "UnwritableEntry",
    "Verified",
    "read_chain",
    "verify_ledger",
    "verify_ledger_after",
]

log = logging.getLogger("carnet.ledger")

_META = Metadata(actor_kind="system", actor_id="access-ledger")
_HEAD = f"""
SELECT originator_version, topic, state FROM {SCHEMA}.events
WHERE originator_id = $1 ORDER BY originator_version DESC LIMIT 1
"""
_CHAIN = f"""
SELECT originator_version, topic, state FROM {SCHEMA}.events
WHERE originator_id = $1 AND originator_version >= $2 ORDER BY originator_version
"""


@dataclass(eq=False)
class _Waiting:
    record: AccessRecord
    arrived: float
    done: asyncio.Future[int]


class Ledger:
    """The one writer of this process's access entries (an `AccessLedger`)."""

    def __init__(
        self,
        store: EventStore,
        *,
        interval: float = 0.002,
        max_batch: int = 500,
        write_timeout: float = 5.0,
        max_attempts: int = 10,
        disabled: bool = False,
        mapper: TypedMapper | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.max_batch = max_batch
        self.write_timeout = write_timeout
        self.max_attempts = max_attempts
        self.disabled = disabled  # the benchmark's baseline: nothing is written
        self.mapper = mapper or TypedMapper()
        self._pending: list[_Waiting] = []
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._head: tuple[int, str] | None = None  # None: read it from the table first
        self._closing = False

    async def record(self, record: AccessRecord) -> int:
        """The entry's sequence number, once it is durable.

        Raises LedgerUnavailable when it cannot be made durable, and
        UnwritableEntry when this record cannot be stored at all: the caller
        must then disclose nothing. A caller cancelled while waiting still
        has its entry written; recording an access that did not happen is
        the safe mistake.
        """
        if self.disabled:
            return 0
        try:
            # The same encoder the batch uses: what passes here cannot fail it.
            self.mapper.transcoder.encode(record)
        except Exception as e:
            LEDGER_FAILURES.inc()
            log.warning("access entry refused, it cannot be encoded: %r", e)
            raise UnwritableEntry(f"the access entry cannot be encoded: {e}") from e
        if self._closing:
            raise LedgerUnavailable("the access ledger is closed")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(record, loop.time(), loop.create_future())
        self._pending.append(waiting)
        if len(self._pending) >= self.max_batch:
            self._full.set()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_pending())
        return await waiting.done

    async def close(self) -> None:
        """Write what is pending without waiting for more, then refuse new entries."""
        self._closing = True
        self._full.set()
        if self._writer is not None:
            await self._writer

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Waiting] = []
        try:
            while self._pending:
                # Wait for company, but no entry waits more than `interval` for it.
                delay = self._pending[0].arrived + self.interval - loop.time()
                if delay > 0 and len(self._pending) < self.max_batch and not self._closing:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._full.wait()
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._write(batch)
        except BaseException as e:
            # Cancelled (the loop is shutting down): nobody may wait forever.
            self._head = None
            self._refuse(batch + self._pending, e)
            self._pending.clear()
            raise

    async def _write(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        try:
            # Bounded even when PostgreSQL hangs: a timeout that waits for the
            # cancelled INSERT to clean up would hold every caller 30-60 s.
            first = await bounded(
                self._append([w.record for w in batch]), self.write_timeout, "the access ledger"
            )
        except Exception as e:
            # Whatever went wrong, the entries are not known to be durable.
            # The head is not known either: the INSERT may have committed.
            self._head = None
            LEDGER_FAILURES.inc()
            log.warning("access ledger write of %d entries failed: %r", len(batch), e)
            self._refuse(batch, e)
            return
        LEDGER_WRITE_DURATION.observe(time.perf_counter() - started)
        LEDGER_BATCH_ENTRIES.observe(len(batch))
        LEDGER_ENTRIES.inc(len(batch))
        for offset, waiting in enumerate(batch):
            if not waiting.done.done():
                waiting.done.set_result(first + offset)

    @staticmethod
    def _refuse(batch: list[_Waiting], cause: BaseException) -> None:
        for waiting in batch:
            if not waiting.done.done():
                error = LedgerUnavailable(f"the access ledger cannot be written: {cause!r}")
                error.__cause__ = cause
                waiting.done.set_exception(error)

    async def _append(self, records: list[AccessRecord]) -> int:
        """Chain the records onto the head and insert them; return the first version."""
        for attempt in range(self.max_attempts):
            if self._head is None:
                self._head = await self._read_head()
            head_version, head_hash = self._head
            now = datetime.now(UTC)
            events = [
                AccessRecorded(
                    originator_id=LEDGER_ID,
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
            try:
                await self.store.append([self.mapper.to_stored_event(e) for e in events], _META)
            except VersionConflict:
                # Another process extended the chain: chain onto its head instead.
                self._head = None
                await asyncio.sleep(random.uniform(0, self.interval * (attempt + 1)))
                continue
            self._head = (events[-1].originator_version, events[-1].hash)
            return head_version + 1
        raise LedgerUnavailable(f"lost the race for the chain head {self.max_attempts} times")

    async def _read_head(self) -> tuple[int, str]:
        row = await self.store.pool.fetchrow(_HEAD, LEDGER_ID)
        if row is None:
            return 0, GENESIS
        event = self._decode(row[0], row[1], row[2])
        return event.originator_version, event.hash

    def _decode(self, version: int, topic: str, state: bytes) -> AccessRecorded:
        return decode(self.mapper, version, topic, state)


class UnwritableEntry(ValueError):
    """This one record cannot be stored: its content is at fault, not the database.

    Only its caller gets it; the batch it would have joined is written. It is
    not LedgerUnavailable, since retrying cannot help, and it means the edge
    let through a value it should have made storable: a bug, answered 500.
    """


class UnreadableEntry(Exception):
    """A stored ledger row that is not an AccessRecorded event any more."""

    def __init__(self, version: int, detail: str) -> None:
        super().__init__(f"ledger entry {version}: {detail}")
        self.version = version
        self.detail = detail


def decode(mapper: TypedMapper, version: int, topic: str, state: bytes) -> AccessRecorded:
    try:
        event = mapper.to_domain_event(StoredEvent(LEDGER_ID, version, topic, state))
    except Exception as e:  # any undecodable row is, to the ledger, an altered one
        raise UnreadableEntry(version, f"its state cannot be decoded ({e})") from e
    if not isinstance(event, AccessRecorded):
        raise UnreadableEntry(version, f"it is a {type(event).__name__}, not an access entry")
    return event


async def _stream(
    pool: asyncpg.Pool, page: int = 1000, mapper: TypedMapper | None = None, first: int = 0
) -> AsyncGenerator[Entry | UnreadableEntry, None]:
    """The chain in version order from version `first`, from one snapshot, `page` rows at a time."""
    mapper = mapper or TypedMapper()
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        async for row in conn.cursor(_CHAIN, LEDGER_ID, first, prefetch=page):
            try:
                event = decode(mapper, row[0], row[1], row[2])
            except UnreadableEntry as e:
                yield e
                continue
            yield Entry(event.originator_version, event.record, event.prev_hash, event.hash)


async def read_chain(pool: asyncpg.Pool) -> list[Entry]:
    """Every ledger entry in version order; UnreadableEntry if one cannot be decoded."""
    entries = []
    async with contextlib.aclosing(_stream(pool)) as chain:
        async for item in chain:
            if isinstance(item, UnreadableEntry):
                raise item
            entries.append(item)
    return entries


async def verify_ledger(pool: asyncpg.Pool, page: int = 1000) -> Finding | None:
    """The first altered, deleted, inserted or reordered entry; None if intact."""
    verifier = ChainVerifier()
    async with contextlib.aclosing(_stream(pool, page)) as chain:
        async for item in chain:
            if isinstance(item, UnreadableEntry):
                verifier.feed_unreadable(item.version, item.detail)
            else:
                verifier.feed(item)
            if verifier.settled:
                break
    return verifier.result()


@dataclass(frozen=True)
class Verified:
    """How far the chain is known to be intact: its last verified entry (0: none yet)."""

    version: int = 0
    hash: str = GENESIS


async def verify_ledger_after(
    pool: asyncpg.Pool, verified: Verified, page: int = 1000
) -> tuple[Finding | None, Verified]:
    """Verify only what was appended since `verified`, and that its last entry is unchanged.

    Reads the entries from `verified.version` on (none before it), so a periodic
    check costs what was written meanwhile, not the whole chain. Answers
    (None, how far the chain is now verified) if intact. On the first fault it
    runs `verify_ledger` over the whole chain, whose finding names the first bad
    entry exactly as `carnet verify` does, and answers it with `verified` as it
    was. What this cannot see is an entry before `verified.version` altered
    together with every later one: the caller re-verifies from the start now and
    then (`Verified()`) for that.
    """
    last, count = verified, 0
    fault: Finding | None = None
    async with contextlib.aclosing(_stream(pool, page, first=verified.version)) as chain:
        async for item in chain:
            count += 1
            if isinstance(item, UnreadableEntry):
                fault = Finding("altered", item.version, item.detail)
                break
            if chain_hash(item.prev_hash, item.record) != item.hash:
                fault = Finding("altered", item.version, "its record does not match its hash")
                break
            if count == 1 and verified.version:
                if item.version != verified.version or item.hash != verified.hash:
                    fault = Finding(
                        "altered", verified.version, "it is not the entry verified before"
                    )
                    break
                continue
            if item.version != last.version + 1:
                fault = Finding("deleted", last.version + 1, f"missing: {last.version + 1}")
                break
            if item.prev_hash != last.hash:
                fault = Finding("deleted", item.version, "its link to the entry before is broken")
                break
            last = Verified(item.version, item.hash)
    if fault is None and verified.version and count == 0:
        fault = Finding("deleted", verified.version, "the chain ends before it")
    if fault is None:
        return None, last
    # Classified exactly by the full verification; ours if the chain was rewritten whole.
    return await verify_ledger(pool, page) or fault, verified
