"""Schemathesis against the served /openapi.json, as every kind of actor.

Every operation of the document gets requests that fit it and requests that
do not, from every actor (and from no one). Each answer must be no 5xx, and
must match the document: a status it declares, its content type, its
response headers and its schema. At the end every projection still runs.

Schemathesis speaks HTTP through `requests`, synchronously; the aiohttp app
is not ASGI. So the app is served for real, on 127.0.0.1 and a free port, by
a thread with its own event loop (asyncpg pools belong to the loop that made
them), wired as `carnet run` wires it, ProblemRunner included.

`make test` gives each operation a small budget; `make fuzz` sets
CARNET_FUZZ_EXAMPLES to search longer.
"""

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.bootstrap import build_services, open_pool
from infra.http.app import create_app
from infra.http.server import ProblemRunner
from infra.projection_status import Status, statuses
from infra.workers import background
from services.actors import ActorKind
from tests.conftest import T0, UNLIMITED, FakeClock
from tests.e2e.support import WEDNESDAY, paris
from tests.world import META, ROOT, make_world

T = TypeVar("T")
EXAMPLES = int(os.environ.get("CARNET_FUZZ_EXAMPLES", "4"))  # per operation and actor
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Requests a short random search rarely makes but a client easily does, always
# tried: (method, path) -> Case arguments; "{...}" path parameters get real ids.
_RANGE = [{"from": "2026-12-03", "to": "2026-12-01"}, {"from": "2026-12-01", "to": "2027-03-01"}]
PINNED: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/availability"): [{"query": r} for r in _RANGE],
    ("GET", "/practitioners/{practitioner_id}/availability"): [
        {"query": {**r, "motive_id": "consultation"}, "path_parameters": {"practitioner_id": ""}}
        for r in _RANGE
    ],
}


class Served:
    """The app on a real socket, run by a thread of its own."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.url = ""
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    async def start(self) -> None:
        pool = await open_pool(self.db_url)
        self.stack.push_async_callback(pool.close)
        self.pool = pool
        services = build_services(pool, clock=FakeClock(T0))
        world = await make_world(services)
        await self.stack.enter_async_context(background(pool, None))
        runner = ProblemRunner(create_app(services, UNLIMITED))
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.tokens = dict(world.tokens)
        # A token of its own to revoke or lift: the actors' tokens must keep working.
        spare = await services.credentials.issue_token(ROOT, META, ActorKind.ANALYST)
        self.ids = {
            "establishment_id": str(world.establishment),
            "practitioner_id": str(world.practitioner),
            "patient_id": str(world.patient),
            "integration_id": str(world.actors["integration"].id),
            "token_id": str(spare.actor.token_id),
        }

    async def stop(self) -> None:
        await self.stack.aclose()

    async def statuses(self) -> list[Status]:
        return await statuses(self.pool)


@pytest.fixture
def served(db_url: str) -> Iterator[Served]:
    server = Served(db_url)
    server.thread.start()
    try:
        server.run(server.start())
        with requests.Session() as session:
            # One real appointment, so that its id can be fuzzed too.
            booked = session.post(
                server.url + "/appointments",
                json={
                    "practitioner_id": server.ids["practitioner_id"],
                    "motive_id": "consultation",
                    "start": paris(WEDNESDAY, "09:00"),
                },
                headers={"Authorization": f"Bearer {server.tokens['patient']}"},
            )
            assert booked.status_code == 201, booked.text
            server.ids["appointment_id"] = booked.json()["id"]
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.run(server.stop())
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(timeout=30)
        server.loop.close()


def _fuzz(operation: Any, who: str | None, served: Served, session: requests.Session) -> None:
    """Hypothesis over one operation as one actor: valid and invalid requests, known ids."""
    headers = {"Authorization": f"Bearer {served.tokens[who]}"} if who else {}
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests on every run: CI stays reproducible
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, known=st.booleans())
    def check(case: Any, known: bool) -> None:
        if known and case.path_parameters:
            # Ids of real objects reach past the 404 into the handlers.
            case.path_parameters = {
                name: served.ids.get(name, value) for name, value in case.path_parameters.items()
            }
        response = case.call(base_url=served.url, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    for pinned in PINNED.get((operation.method.upper(), operation.path), []):
        check = example(case=operation.Case(**pinned), known=True)(check)
    check()


def test_the_api_answers_every_actor_as_its_document_says(served: Served) -> None:
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # the document itself is wrong here
                failures.append(f"invalid operation: {result.err()}")
                continue
            operation = result.ok()
            for who in [*sorted(served.tokens), None]:  # None: no credentials at all
                try:
                    _fuzz(operation, who, served, session)
                # Every operation is fuzzed as everyone; all failures are reported at the end.
                except (Exception, FailureGroup) as e:
                    failures.append(f"{operation.label} as {who}: {e}")
            stopped = [s for s in served.run(served.statuses()) if s.state != "running"]
            if stopped:
                failures.append(f"after {operation.label}, projections stopped: {stopped}")

    assert not failures, "\n\n".join(failures)
    found = served.run(served.statuses())
    assert found and all(s.state == "running" for s in found), found
