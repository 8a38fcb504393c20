"""The event loop every Carnet process runs on: uvloop.

uvloop (libuv, by asyncpg's authors) runs the same asyncio programs with a
loop and transports written in C. A booking's server CPU is mostly the
loop's and the sockets' (a profile of benchmark 3 put a sixth of it in
the transports' writes alone), so this is where a worker gains most
without changing what it does. `CARNET_EVENT_LOOP=asyncio` runs the
standard loop instead (to compare, or to rule uvloop out).
"""

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop unless CARNET_EVENT_LOOP=asyncio."""
    if os.environ.get("CARNET_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(main)
    return uvloop.run(main)
