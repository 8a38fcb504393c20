"""`/metrics` on a port of its own, for the processes that serve no HTTP API
(`carnet project`, `carnet relay`), and the one `/metrics` handler (the app's too)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from infra.metrics import exposition
from infra.natslink import NatsLink
from infra.sampler import SAMPLE_EVERY, sampling, watch_loop


async def metrics_handler(request: web.Request) -> web.Response:
    """This process's metrics; OpenMetrics when the scraper asks for it (Accept)."""
    body, content_type = exposition(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_metrics(
    host: str,
    port: int,
    pool: asyncpg.Pool | None = None,
    nats: NatsLink | None = None,
    *,
    database_timeout: float = 2.0,
    interval: float = SAMPLE_EVERY,
) -> AsyncIterator[str | None]:
    """Serve `/metrics` on host:port while inside; yield its base URL (None: port 0, off).

    With a pool, the sampler runs too (log head, lags, pool, database, event loop,
    and NATS if given); without, only the event loop's lag is measured. The ledger
    is verified by `carnet run`/`serve` processes only (infra.workers.background).
    """
    if not port:
        yield None
        return
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port)
        await site.start()
        if pool is None:
            watcher = asyncio.create_task(watch_loop())
            stack.push_async_callback(_cancel, watcher)
        else:
            await stack.enter_async_context(
                sampling(
                    pool,
                    nats,
                    interval=interval,
                    database_timeout=database_timeout,
                    verify_every=None,
                )
            )
        yield f"http://{host}:{port}"
