"""The scenario's side of the wire: agents that call Carnet over real TCP, and
the journal of every answer they got.

Each agent has a token, a source address (all of 127/8 is loopback on
Linux, so an `aiohttp.TCPConnector(local_addr=...)` makes a request really
come from 127.0.0.2) and a user agent. The journal keeps, for every request,
what its sender saw: the app clock when it was sent, the status, the
decoded body and the echoed request id. The ground truth is computed from
the journal alone (tests/e2e/scenario_truth.py), never from the ledger.
"""

import asyncio
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from infra.http.wire import MIN_POSITION_HEADER
from tests.conftest import FakeClock

# A read model can fall behind while a long transaction runs anywhere on the
# database server (docs/operations.md, "Lag and long transactions"): a
# frontend then gets 503 not-caught-up and retries, as these agents do.
CATCH_UP_TRIES = 120
# The routes docs/api.md marks "Audited": each call leaves an access entry.
_AUDITED = re.compile(
    r"^/(appointments|patients|me/access-log|ledger)(/|$)|^/practitioners/[^/]+/agenda$"
)


def audited(path: str) -> bool:
    return bool(_AUDITED.match(path))


@dataclass(frozen=True)
class Call:
    """One request an agent sent and the answer it got, as the agent saw it."""

    agent: str
    at: datetime  # the app's clock while the request ran
    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    status: int
    body: Any  # the decoded JSON answer (a problem for errors), or None
    request_id: str  # as echoed by the server
    client_ip: str
    user_agent: str

    @property
    def audited(self) -> bool:
        return audited(self.path)


@dataclass
class Net:
    """What every agent shares: the server, the app's clock, the journal, the log head."""

    base: URL
    clock: FakeClock
    rng: random.Random
    calls: list[Call] = field(default_factory=list)
    head: int = 0  # the highest Carnet-Position any answer carried
    floor: int = 0  # what every read waits for: the head when the day began
    waited: float = 0.0  # seconds spent waiting for read models to catch up
    _sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def session(self, address: str) -> aiohttp.ClientSession:
        """One keep-alive session per source address."""
        if address not in self._sessions:
            connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=4)
            self._sessions[address] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)
            )
        return self._sessions[address]

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def settle(self) -> None:
        """From now on every read reflects at least what was written so far."""
        self.floor = self.head

    def tick(self, low: float, high: float) -> None:
        """Let some time pass on the app's clock (seconds, drawn from the seed)."""
        self.clock.advance(seconds=round(self.rng.uniform(low, high), 3))

    def agent(
        self,
        name: str,
        token: str,
        user_agent: str,
        address: str = "127.0.0.1",
        *,
        fresh: bool = False,
    ) -> "Agent":
        return Agent(self, name, token, user_agent, address, fresh)

    def of(self, *agents: str) -> list[Call]:
        return [c for c in self.calls if c.agent in agents]


@dataclass
class Agent:
    """One client of the API: a bearer token, sent from one address with one user agent."""

    net: Net
    name: str
    token: str
    user_agent: str
    address: str
    # True: read models answer only once they hold everything the scenario
    # wrote, so that what this agent sees (and chooses next) is the same on
    # every run. False: its own writes and what was written before the day
    # began (`Net.settle`), as a frontend reads its own writes.
    fresh: bool = False
    head: int = 0  # the highest Carnet-Position this agent's own answers carried

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect: tuple[int, ...] | None = None,
    ) -> Call:
        net = self.net
        # Request ids from the seed: reproducible, and telling nothing about the sender.
        request_id = f"{net.rng.getrandbits(128):032x}"
        headers = {
            "Authorization": f"Bearer {self.token}",
            "User-Agent": self.user_agent,
            "X-Request-Id": request_id,
        }
        wait_for = net.head if self.fresh else max(net.floor, self.head)
        if wait_for and method == "GET":
            headers[MIN_POSITION_HEADER] = str(wait_for)
        at = net.clock.now()
        for _ in range(CATCH_UP_TRIES):
            async with net.session(self.address).request(
                method, net.base.with_path(path), json=body, params=params, headers=headers
            ) as response:
                status = response.status
                answer = await response.json(content_type=None) if await response.read() else None
                echoed = response.headers.get("X-Request-Id", "")
                position = response.headers.get("Carnet-Position")
            if not (status == 503 and answer and answer["type"].endswith("/not-caught-up")):
                break
            # Nothing was disclosed or recorded: wait as told, and ask again.
            pause = float(response.headers.get("Retry-After", "1"))
            net.waited += pause
            await asyncio.sleep(pause)
        if position:
            net.head = max(net.head, int(position))
            self.head = max(self.head, int(position))
        call = Call(
            agent=self.name,
            at=at,
            method=method,
            path=path,
            params=tuple(sorted((params or {}).items())),
            status=status,
            body=answer,
            request_id=echoed,
            client_ip=self.address,
            user_agent=self.user_agent,
        )
        net.calls.append(call)
        if expect is not None:
            assert status in expect, (method, path, body, status, answer)
        return call

    async def get(self, path: str, expect: tuple[int, ...] | None = (200,), **params: str) -> Call:
        return await self.call("GET", path, params=params or None, expect=expect)

    async def post(self, path: str, body: Any, expect: tuple[int, ...] | None = (201,)) -> Call:
        return await self.call("POST", path, body, expect=expect)

    async def put(self, path: str, body: Any, expect: tuple[int, ...] | None = (200,)) -> Call:
        return await self.call("PUT", path, body, expect=expect)
