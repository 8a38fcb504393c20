"""The background half of a Carnet process: the LISTEN waker, the projection
runners, the NATS relay and the metrics sampler (with the ledger's periodic
verification), started together and cancelled together."""

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator

import asyncpg

from infra.natslink import NatsLink
from infra.projector import Projector
from infra.relay import Relay
from infra.sampler import SAMPLE_EVERY, VERIFY_EVERY, sampling
from infra.stream import StreamNames
from infra.waker import Waker
from projections import all_projections

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def background(
    pool: asyncpg.Pool,
    nats: NatsLink | None,
    names: StreamNames | None = None,
    projections: bool = True,
    *,
    database_timeout: float = 2.0,
    sample_every: float = SAMPLE_EVERY,
    verify_every: float | None = VERIFY_EVERY,
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """`database_timeout` bounds the sampler's probes (Settings.database_timeout)."""
    waker = Waker()
    tasks: list[asyncio.Task[None]] = []
    if projections:
        runners = [Projector(pool, p) for p in all_projections()]
        for runner in runners:
            await runner.ensure()
        tasks += [asyncio.create_task(r.run(waker.event())) for r in runners]
    if nats is not None:
        tasks.append(asyncio.create_task(_relay(pool, nats, names, waker.event())))
    tasks.append(asyncio.create_task(waker.listen(pool)))
    try:
        async with sampling(
            pool,
            nats,
            interval=sample_every,
            database_timeout=database_timeout,
            verify_every=verify_every,
        ):
            yield tasks
    finally:
        await _stop(tasks, database_timeout + 3)


async def _stop(tasks: list[asyncio.Task[None]], within: float) -> None:
    """Cancel the tasks and wait for them, within a bound: a task cancelled in the
    middle of a query can wait for ever on its cancel confirmation from a stuck
    server, and a stop must not hang with it. What is left is named in the log
    (with where it waits) and is ended when its pool is closed or terminated."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=within) if tasks else (set(), set())
    for task in pending:
        stack = io.StringIO()
        task.print_stack(limit=8, file=stack)
        log.error(
            "background task %s did not stop within %.0f s:\n%s",
            task.get_name(),
            within,
            stack.getvalue(),
        )


async def _relay(
    pool: asyncpg.Pool, nats: NatsLink, names: StreamNames | None, wake: asyncio.Event
) -> None:
    await nats.connected.wait()
    assert nats.nc is not None
    await Relay(pool, nats.nc, names).run(wake)
