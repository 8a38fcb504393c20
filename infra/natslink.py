"""A NATS connection that keeps trying: Carnet starts, and writes, without NATS.

nats-py reconnects by itself once it has connected; it does not retry the
first connection, so that part is ours.
"""

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client as NATS

from infra.settings import masked_url

log = logging.getLogger("carnet.nats")


class NatsLink:
    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: NATS | None = None
        self.connected = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _quiet(self, error: Exception) -> None:
        log.debug("NATS: %s", error)

    async def connect_once(self) -> bool:
        try:
            async with asyncio.timeout(5):
                self.nc = await nats.connect(
                    # Several servers of a cluster may be named, comma-separated.
                    servers=[u.strip() for u in self.url.split(",") if u.strip()],
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    error_cb=self._quiet,
                )
        except Exception as e:  # unreachable now; writes must not wait for it
            log.warning("NATS unreachable at %s (%s)", masked_url(self.url), e)
            return False
        self.connected.set()
        return True

    async def run(self, max_backoff: float = 5.0) -> None:
        """Connect, retrying with backoff until it works (or the task is cancelled)."""
        backoff = 0.5
        while not await self.connect_once():
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    async def close(self, within: float = 5.0) -> None:
        """Close the connection; a server that stopped reading cannot make it hang."""
        if self.nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(within):
                    await self.nc.close()
