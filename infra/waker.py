"""LISTEN for commits to the log and wake whoever tails it: no polling floor."""

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from infra.eventstore import CHANNEL

log = logging.getLogger("carnet.waker")


async def sleep_until(wake: asyncio.Event, idle: float) -> None:
    """Wait for a wake-up, or `idle` seconds, whichever comes first.

    Not `asyncio.wait_for(wake.wait(), idle)`: on Python 3.11 that swallows a
    cancellation arriving as the timeout fires, and a cancelled worker then
    loops on for ever. `asyncio.timeout` does not.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(idle):
            await wake.wait()


class Waker:
    def __init__(self) -> None:
        self._events: list[asyncio.Event] = []

    def event(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.append(event)
        return event

    def wake_all(self, *_: Any) -> None:
        for event in self._events:
            event.set()

    async def listen(self, pool: asyncpg.Pool, retry: float = 1.0) -> None:
        """Hold one connection LISTENing until cancelled; reconnect if it drops."""
        while True:
            try:
                async with pool.acquire() as conn:
                    closed = asyncio.Event()
                    conn.add_termination_listener(lambda _, closed=closed: closed.set())
                    await conn.add_listener(CHANNEL, self.wake_all)
                    self.wake_all()  # anything committed while we were not listening
                    try:
                        await closed.wait()
                    finally:
                        with contextlib.suppress(Exception):
                            await conn.remove_listener(CHANNEL, self.wake_all)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("LISTEN connection lost (%s); reconnecting", e)
                await asyncio.sleep(retry)
