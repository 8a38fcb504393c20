"""The event loop every Carnet process runs on (uvloop), and its garbage collector.

uvloop (libuv, by asyncpg's authors) runs the same asyncio programs with a
loop and transports written in C. A booking's server CPU is mostly the
loop's and the sockets' (a profile of benchmark 3 put a sixth of it in
the transports' writes alone), so this is where a worker gains most
without changing what it does. `CARNET_EVENT_LOOP=asyncio` runs the
standard loop instead (to compare, or to rule uvloop out).
"""

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


# Python's default collects the youngest generation every 700 allocations
# net. A rebuild page or a burst of requests allocates tens of thousands of
# objects that all live until the page or request is done, so each of those
# collections scans them for nothing, and promotes them to be scanned again:
# a rebuild spent a fifth of its CPU there (docs/benchmarks.md). Collections
# still run, 30 times less often; cycles are still freed.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Fewer collections, and none over what the imports built (frozen).

    `CARNET_GC=default` leaves Python's collector as it is (to compare)."""
    if os.environ.get("CARNET_GC", "tuned") == "default":
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop unless CARNET_EVENT_LOOP=asyncio, the collector tuned."""
    tune_gc()
    if os.environ.get("CARNET_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(main)
    return uvloop.run(main)
