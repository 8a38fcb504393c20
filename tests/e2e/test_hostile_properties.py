"""Property: no text a client sends can crash a request or stop a read model.

Hypothesis feeds arbitrary Unicode (lone surrogates, NUL, C0 and C1
controls, bidi overrides, overlong text) into every text field of every
command and query, and arbitrary bytes into every header the app reads. Each
answer must be a 2xx or a 4xx problem+json, never a 5xx, and every
projection must still be running once it has caught up with the log.

The text fields are derived from the route table and the msgspec Structs,
so a field added later is fuzzed without touching this file; a new request
Struct with text in it needs one valid example in `VALID` (tests/e2e/hostile_support.py;
the test says so). The app is served as `carnet run` serves it (ProblemRunner), so
the HTTP parser's own refusals count as problem+json too.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from yarl import URL

from infra.http import schemas as s
from infra.http.app import create_app
from infra.http.server import ProblemRunner
from infra.projection_status import statuses
from infra.workers import background
from services.actors import ActorKind
from tests.conftest import UNLIMITED, ConsistentClient
from tests.e2e.hostile_support import (
    BODY_TARGETS,
    QUERY_TARGETS,
    TARGETS,
    VALID,
    Target,
    actor_for,
    hostile_header,
    hostile_query,
    hostile_text,
)
from tests.e2e.support import PROBLEM_JSON, WEDNESDAY, booked, paris
from tests.world import META, ROOT

# Every header the app reads, by name on the wire.
HEADERS = (
    "Authorization",
    "X-Request-Id",
    "X-Correlation-Id",
    "X-Purpose-Of-Use",
    "User-Agent",
    "Idempotency-Key",
    "Carnet-Min-Position",
)
# `make fuzz` sets CARNET_FUZZ_EXAMPLES to search longer than `make test` does.
FUZZ = settings(
    max_examples=int(os.environ.get("CARNET_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class CarnetTestServer(TestServer):
    """The app served as `carnet run` serves it: parser refusals are problems too."""

    async def _make_runner(self, **kwargs: Any) -> ProblemRunner:
        return ProblemRunner(self.app, **kwargs)


class Scene(msgspec.Struct):
    client: TestClient
    ids: dict[str, str]
    tokens: dict[str, str]


@pytest.fixture
async def scene(services, pool, world) -> AsyncIterator[Scene]:
    async with (
        background(pool, None),
        ConsistentClient(CarnetTestServer(create_app(services, UNLIMITED)), services) as client,
    ):
        appointment = await booked(client, world, paris(WEDNESDAY, "09:00"))
        # A token of its own to revoke, so the world's tokens stay valid.
        spare = await services.credentials.issue_token(ROOT, META, ActorKind.ANALYST)
        ids = {
            "establishment": str(world.establishment),
            "establishment_id": str(world.establishment),
            "practitioner": str(world.practitioner),
            "practitioner_id": str(world.practitioner),
            "patient_id": str(world.patient),
            "appointment_id": appointment["id"],
            "token_id": str(spare.actor.token_id),
        }
        yield Scene(client, ids, world.tokens)


def _filled(value: Any, ids: dict[str, str]) -> Any:
    """A copy of `value` with "{name}" placeholders replaced by the scene's ids."""
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _filled(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, ids) for v in value]
    return value


def _put(value: Any, path: tuple[str | int, ...], text: str) -> Any:
    """`value` with `text` at `path`, creating what is missing on the way."""
    if not path:
        return text
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(value or [{}])
        items[head] = _put(items[head], rest, text)
        return items
    return {**(value or {}), head: _put((value or {}).get(head), rest, text)}


def _answered_safely(sent: str, status: int, content_type: str, body: str) -> None:
    # pytest-asyncio hides hypothesis's falsifying arguments: the message says what was sent.
    note(sent)
    assert status < 500, f"{sent} -> {status} {body}"
    assert 200 <= status < 300 or content_type.startswith(PROBLEM_JSON), (
        f"{sent} -> {status} {body}"
    )
    assert "Traceback" not in body, f"{sent} -> {status} {body}"


async def _still_running(services: Any) -> None:
    """Every projection catches up with the log, and none stopped on the way."""
    deadline = time.monotonic() + 5
    while True:
        found = await statuses(services.read.pool)
        stopped = [s for s in found if s.state != "running"]
        assert found and not stopped, stopped
        if all(s.lag_events == 0 for s in found) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


def test_every_text_field_of_every_command_and_query_is_fuzzed():
    # Derived, not listed: these must be found, and every Struct needs an example.
    found = {(t.route.path, t.path) for t in TARGETS}
    assert ("/appointments/{appointment_id}/cancel", ("reason",)) in found
    assert ("/practitioners", ("motives", 0, "name")) in found
    assert ("/establishments", ("city",)) in found
    missing = sorted({t.cls.__name__ for t in TARGETS if t.cls not in VALID})
    assert not missing, f"add a valid example of {missing} to VALID"


def _target(method: str, path: str, field: str) -> Target:
    (found,) = (
        t for t in TARGETS if (t.route.method, t.route.path, t.path) == (method, path, (field,))
    )
    return found


@FUZZ
@given(target=st.sampled_from(BODY_TARGETS), text=hostile_text)
# Issue 7's reproduction, always tried: a patient froze every agenda with this.
@example(target=_target("POST", "/appointments/{appointment_id}/cancel", "reason"), text="x\x00")
async def test_no_text_in_a_command_gives_a_5xx_or_stops_a_projection(
    scene, services, target, text
):
    body = _put(_filled(VALID[target.cls], scene.ids), target.path, text)
    headers = {"Authorization": f"Bearer {scene.tokens[actor_for(target.route)]}"}

    # aiohttp's json= escapes a lone surrogate as "\ud800": raw JSON text.
    response = await scene.client.request(
        target.route.method, target.route.path.format(**scene.ids), json=body, headers=headers
    )

    sent = f"{target.route.method} {response.url.path} {body!r} as {actor_for(target.route)}"
    _answered_safely(sent, response.status, response.content_type, await response.text())
    if "\x00" in text:
        assert response.status == 400, sent
    await _still_running(services)


@FUZZ
@given(target=st.sampled_from(QUERY_TARGETS), encoded=hostile_query)
@example(target=_target("GET", "/establishments", "city"), encoded="%00")
async def test_no_bytes_in_a_query_parameter_give_a_5xx_or_stop_a_projection(
    scene, services, target, encoded
):
    (name,) = (str(p) for p in target.path)
    params = {k: v for k, v in _filled(VALID[target.cls], scene.ids).items() if k != name}
    query = "&".join(filter(None, [urlencode(params), f"{name}={encoded}"]))
    url = scene.client.make_url(target.route.path.format(**scene.ids))
    headers = {"Authorization": f"Bearer {scene.tokens[actor_for(target.route)]}"}

    # Sent as encoded, byte for byte: %FF and %ED%A0%80 are not UTF-8.
    response = await scene.client.session.get(URL(f"{url}?{query}", encoded=True), headers=headers)

    sent = f"GET {response.url.raw_path_qs}"
    _answered_safely(sent, response.status, response.content_type, await response.text())
    if "%00" in encoded:
        assert response.status == 400, sent
    await _still_running(services)


# (method, path, body, who): an audited read, a read-model read, an audited write.
HEADER_REQUESTS = (
    ("GET", "/patients/{patient_id}", None, "patient"),
    ("GET", "/practitioners/{practitioner_id}/agenda?date=" + WEDNESDAY, None, "practitioner"),
    ("GET", "/establishments", None, "patient"),
    ("POST", "/appointments", VALID[s.BookAppointment], "patient"),
)


@FUZZ
@given(
    header=st.sampled_from(HEADERS),
    value=hostile_header,
    bearer=st.booleans(),
    request=st.sampled_from(HEADER_REQUESTS),
)
# Issue 7's reproduction: one byte that is not UTF-8 failed the ledger's batch.
@example(header="User-Agent", value=b"\xff", bearer=False, request=HEADER_REQUESTS[0])
# Found by this test: a bearer token that is not UTF-8 once answered 500.
@example(header="Authorization", value=b"\x80", bearer=True, request=HEADER_REQUESTS[0])
async def test_no_bytes_in_a_header_give_a_5xx_or_stop_a_projection(
    scene, services, header, value, bearer, request
):
    method, path, body, who = request
    token = f"Bearer {scene.tokens[who]}".encode()
    headers = [(b"Authorization", token)] if header != "Authorization" else []
    headers.append((header.encode(), b"Bearer " + value if bearer else value))
    raw_body = msgspec.json.encode(_filled(body, scene.ids)) if body else b""

    # aiohttp's client refuses such bytes: the request is written by hand.
    status, content_type, text = await _send_raw(
        scene.client, method, path.format(**scene.ids), headers, raw_body
    )

    sent = f"{method} {path.format(**scene.ids)} with {header}: {b'Bearer ' * bearer + value!r}"
    _answered_safely(sent, status, content_type, text)
    await _still_running(services)


async def _send_raw(
    client: TestClient, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, str, str]:
    """One HTTP/1.1 request, byte for byte; (status, content type, body) of its answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: test", b"Connection: close"]
        head += [name + b": " + value for name, value in headers]
        if body:
            head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(30):
            data = await reader.read()
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), fields.get("content-type", ""), payload.decode("latin-1")
