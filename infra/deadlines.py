"""Deadlines on waits for the database that hold, even when it hangs.

Cancelling a wait on asyncpg does not end it. A cancelled query sends a
CancelRequest over a new connection and waits for the server to confirm;
the transaction's ROLLBACK and the pool's release (shielded from
cancellation) wait for that confirmation too, each up to the command
timeout; and Python 3.11's `asyncio.wait_for` waits for the cancelled work
to finish before it raises. With a frozen server nothing is ever
confirmed, so "cancel, then wait for the cleanup" took 30 to 60 s.

`bounded` therefore answers at the deadline and leaves the cancelled work
to clean up in the background: its connection returns to the pool (or is
closed) once the server answers or asyncpg's own timeouts expire.
"""

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from services.ports import Unavailable

T = TypeVar("T")

log = logging.getLogger("carnet.deadlines")

# Cancelled work still cleaning up; held so that it is not garbage-collected
# half way (the event loop keeps only weak references to tasks).
_abandoned: set[asyncio.Future[Any]] = set()


class DeadlineExceeded(Unavailable):
    """The work did not finish in time; it was cancelled and left to clean up."""


async def bounded(work: Awaitable[T], seconds: float, what: str = "the database") -> T:
    """The result of `work`, or DeadlineExceeded after `seconds`, whatever `work` waits on."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if done:
        return task.result()
    _abandon(task)
    raise DeadlineExceeded(f"no answer from {what} within {seconds:g} s")


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Its client already has its 503; this is only how the cleanup ended.
        log.debug("abandoned work ended with %r", task.exception())
