"""A stop of the background work is bounded, even when a task will not end."""

import asyncio
import logging
import time

import pytest

from infra.workers import _stop


async def test_a_task_that_ignores_its_cancellation_does_not_hang_the_stop(caplog):
    async def stuck() -> None:
        # What a query cancelled on a stuck server does: it waits for the
        # server's confirmation of the cancel, which never comes.
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def polite() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stuck(), name="stuck"), asyncio.create_task(polite())]
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="infra.workers"):
        await _stop(tasks, 0.3)
    assert time.monotonic() - started < 2
    assert tasks[1].cancelled()
    assert not tasks[0].done()
    assert "background task stuck did not stop" in caplog.text
    assert "in stuck" in caplog.text  # where it waits
    tasks[0].get_coro().close()


@pytest.mark.parametrize("count", [0, 3])
async def test_tasks_that_end_are_awaited(count):
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(count)]
    await _stop(tasks, 5)
    assert all(t.cancelled() for t in tasks)
