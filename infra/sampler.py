"""The gauges nobody's code path sets: sampled every few seconds from the database,
the pool, the NATS link and the event loop, and the ledger's periodic verification.

Every tick (`Sampler.sample`):

- the pool: `carnet_db_pool_size` (open connections), `_max`, `_in_use` (open minus
  idle: acquired, or being connected for an acquirer) and `_waiting`. asyncpg counts
  no waiters: an acquirer waits in `pool._queue.get()` (an asyncio.Queue of
  connection holders), so `_waiting` is the number of that queue's pending getters,
  read from its internals (0 if an asyncpg upgrade renames them).
- `carnet_database_up`: `SELECT 1`, bounded by the database timeout whatever the
  server does (infra.deadlines.bounded, as /readyz). It goes through the pool, so a
  pool saturated for longer than the timeout reads as down too: then no request gets
  a connection either.
- one statement, also bounded, reads the log's head (its highest position and that
  event's recorded_at), each projection checkpoint (position, state) and each relay
  checkpoint, each with its lag: the events after the checkpoint in reading order
  (tx, position), counted exactly up to LAG_COUNT_LIMIT through the (tx, position)
  index, beyond which the position difference to the head is reported instead (an
  estimate: positions are allocated in order, committed out of order); and the
  age of the first of them (now - its recorded_at; 0 when caught up). So a tick
  costs a few index probes, never a count across a long log.

When a query fails or times out, the gauges it feeds keep their last values and
`carnet_database_up` says 0.

The ledger's hash chains are verified in a task of its own (`verify_every`):
every shard whole at start, then only what each shard appended since
(`verify_ledger_after`), and every shard whole again every `full_every`
verifications.

`watch_loop` measures the event loop's lag: it sleeps LOOP_PERIOD and records how
much later than asked it woke up.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg

from infra.deadlines import bounded
from infra.ledger import Verified, verify_ledger_after
from infra.metrics import (
    DATABASE_UP,
    EVENT_LOOP_LAG,
    LEDGER_VERIFICATION,
    LOG_HEAD_POSITION,
    LOG_HEAD_TIMESTAMP,
    NATS_CONNECTED,
    POOL_IN_USE,
    POOL_MAX,
    POOL_SIZE,
    POOL_WAITING,
    PROJECTION_LAG_EVENTS,
    PROJECTION_LAG_SECONDS,
    PROJECTION_POSITION,
    PROJECTION_STOPPED,
    RELAY_LAG_EVENTS,
    RELAY_LAG_SECONDS,
)
from infra.natslink import NatsLink
from infra.projector import CHECKPOINTS
from infra.schema import SCHEMA

log = logging.getLogger("carnet.sampler")

SAMPLE_EVERY = 5.0  # seconds between two samples
VERIFY_EVERY = 300.0  # seconds between two verifications of the ledger
FULL_EVERY = 12  # every 12th verification reads the whole chain (hourly by default)
LOOP_PERIOD = 0.5
LAG_COUNT_LIMIT = 10_000

_AFTER = f"""(SELECT count(*) FROM (SELECT 1 FROM {SCHEMA}.events e
        WHERE (e.tx, e.position) > (c.tx, c.position) ORDER BY e.tx, e.position LIMIT $1) x),
    (SELECT extract(epoch FROM now() - e.recorded_at) FROM {SCHEMA}.events e
        WHERE (e.tx, e.position) > (c.tx, c.position) ORDER BY e.tx, e.position LIMIT 1)"""
_SAMPLE = f"""
SELECT 'log' AS kind, '' AS name, '' AS state, h.position, 0::bigint AS lag_events,
    extract(epoch FROM h.recorded_at)::float8 AS seconds
FROM (SELECT position, recorded_at FROM {SCHEMA}.events ORDER BY position DESC LIMIT 1) h
UNION ALL
SELECT 'projection', c.name, c.state, c.position, {_AFTER} FROM {CHECKPOINTS} c
UNION ALL
SELECT 'relay', c.stream, '', c.position, {_AFTER} FROM {SCHEMA}.relay_checkpoints c
"""


def pool_waiting(pool: asyncpg.Pool) -> int:
    """Acquirers waiting for a connection (asyncpg keeps no count: see the module doc)."""
    getters = getattr(getattr(pool, "_queue", None), "_getters", None)
    if getters is None:
        return 0
    return sum(1 for getter in list(getters) if not getter.done())


class Sampler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nats: NatsLink | None = None,
        *,
        interval: float = SAMPLE_EVERY,
        timeout: float = 2.0,
        verify_every: float | None = VERIFY_EVERY,
        full_every: int = FULL_EVERY,
    ) -> None:
        self.pool = pool
        self.nats = nats
        self.interval = interval
        self.timeout = timeout
        self.verify_every = verify_every
        self.full_every = full_every
        self.verified = Verified()
        self.verifications = 0
        # Set to stop between ticks. A query cancelled half-way through asyncpg's
        # extended protocol can wait for ever on its cancel confirmation, and the
        # process's stop with it; so the loops finish their tick instead.
        self.stopping = asyncio.Event()

    def sample_pool(self) -> None:
        size = self.pool.get_size()
        POOL_SIZE.set(size)
        POOL_MAX.set(self.pool.get_max_size())
        POOL_IN_USE.set(size - self.pool.get_idle_size())
        POOL_WAITING.set(pool_waiting(self.pool))

    async def sample(self) -> None:
        """One tick: every gauge above once (see the module docstring)."""
        self.sample_pool()
        if self.nats is not None:
            NATS_CONNECTED.set(1 if self.nats.is_connected else 0)
        try:
            await bounded(self.pool.fetchval("SELECT 1"), self.timeout)
        except Exception as e:
            DATABASE_UP.set(0)
            log.debug("database probe failed: %r", e)
            return
        DATABASE_UP.set(1)
        try:
            rows = await bounded(self.pool.fetch(_SAMPLE, LAG_COUNT_LIMIT), self.timeout)
        except Exception as e:
            log.warning("cannot sample the log and checkpoints: %r", e)
            return
        head = 0
        for row in rows:
            if row["kind"] == "log":
                head = int(row["position"])
                LOG_HEAD_POSITION.set(head)
                LOG_HEAD_TIMESTAMP.set(float(row["seconds"]))
        for row in rows:
            kind, name, position = row["kind"], row["name"], int(row["position"])
            lag = int(row["lag_events"])
            if lag >= LAG_COUNT_LIMIT:
                lag = max(lag, head - position)
            seconds = max(0.0, float(row["seconds"] or 0.0))
            if kind == "projection":
                PROJECTION_POSITION.labels(name).set(position)
                PROJECTION_STOPPED.labels(name).set(1 if row["state"] == "stopped" else 0)
                PROJECTION_LAG_EVENTS.labels(name).set(lag)
                PROJECTION_LAG_SECONDS.labels(name).set(seconds)
            elif kind == "relay":
                RELAY_LAG_EVENTS.labels(name).set(lag)
                RELAY_LAG_SECONDS.labels(name).set(seconds)

    async def verify(self) -> bool:
        """One verification of the ledger's chain; whether it is intact."""
        full = self.verifications % self.full_every == 0
        started = self.verified if not full else Verified()
        finding, verified = await verify_ledger_after(self.pool, started)
        self.verifications += 1
        if finding is not None:
            log.error(
                "access ledger TAMPERED: first bad entry is shard %d #%d (%s): %s",
                finding.shard,
                finding.version,
                finding.kind,
                finding.detail,
            )
            # Intact before the first bad entry (of its shard).
            LEDGER_VERIFICATION.record(False, time.time(), finding.version - 1)
            self.verifications = 0  # the next one reads the whole chain again
            return False
        self.verified = verified
        LEDGER_VERIFICATION.record(True, time.time(), verified.version)
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def run(self) -> None:
        """Sample every `interval` until stopped (or cancelled)."""
        while not self.stopping.is_set():
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the process, only the sample
                log.exception("metrics sample failed")
            await self._pause(self.interval)

    async def run_verification(self) -> None:
        """Verify the ledger every `verify_every` seconds until stopped (or cancelled)."""
        if self.verify_every is None:
            return
        while not self.stopping.is_set():
            try:
                await self.verify()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database, most likely: try again next time
                log.warning("cannot verify the access ledger: %r", e)
            await self._pause(self.verify_every)


async def watch_loop(period: float = LOOP_PERIOD) -> None:
    """Record how late the event loop wakes a sleeper, every `period`, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + period
        await asyncio.sleep(period)
        EVENT_LOOP_LAG.set(max(0.0, loop.time() - asked))


@contextlib.asynccontextmanager
async def sampling(
    pool: asyncpg.Pool,
    nats: NatsLink | None = None,
    *,
    interval: float = SAMPLE_EVERY,
    database_timeout: float = 2.0,
    verify_every: float | None = VERIFY_EVERY,
    loop_period: float = LOOP_PERIOD,
) -> AsyncIterator[Sampler]:
    """Run a Sampler, its ledger verification and `watch_loop` while inside."""
    sampler = Sampler(
        pool, nats, interval=interval, timeout=database_timeout, verify_every=verify_every
    )
    tasks = [
        asyncio.create_task(sampler.run()),
        asyncio.create_task(sampler.run_verification()),
        asyncio.create_task(watch_loop(loop_period)),
    ]
    try:
        yield sampler
    finally:
        # Let a tick under way finish (each statement is bounded), then cancel.
        sampler.stopping.set()
        await asyncio.wait(tasks[:2], timeout=database_timeout + 1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
