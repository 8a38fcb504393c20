"""Requests the HTTP parser refuses answer problem+json like every other refusal."""

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from infra.http.app import create_app
from infra.http.server import IDLE_TIMEOUT, ProblemRunner


class CarnetTestServer(TestServer):
    """The app served as `carnet run` serves it."""

    async def _make_runner(self, **kwargs: Any) -> ProblemRunner:
        return ProblemRunner(self.app, **kwargs)


@pytest.fixture
async def port(services) -> Any:
    async with CarnetTestServer(create_app(services)) as server:
        yield server.port


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()  # the parser's answers close the connection
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


BAD = {
    "huge header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "bare CR in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "bad Content-Length": b"POST /appointments HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n",
    "two Content-Lengths": (
        b"POST /appointments HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    ),
    "NUL in the request line": b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(BAD.values()), ids=list(BAD))
async def test_a_request_the_parser_refuses_gets_a_problem(port, request_bytes):
    status, headers, body = await _raw(port, request_bytes)

    assert 400 <= status < 500, (status, body)
    assert headers["content-type"].startswith("application/problem+json"), headers
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"].startswith("https://carnet.dev/problems/")


async def test_the_server_still_answers_after_a_refusal(port):
    await _raw(port, BAD["bare CR in a header"])

    status, _, body = await _raw(
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    assert status == 200, body


async def test_a_refused_request_is_logged_as_the_clients_mistake_without_a_trace(port, caplog):
    with caplog.at_level(logging.INFO):
        await _raw(port, BAD["bare CR in a header"])

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert any("malformed request" in r.getMessage() for r in caplog.records)
    assert "Traceback" not in caplog.text


async def test_a_half_sent_request_does_not_hold_its_connection_open(services):
    assert IDLE_TIMEOUT <= 30  # what `carnet run` serves with, unless told otherwise
    assert ProblemRunner(create_app(services))._kwargs["keepalive_timeout"] == IDLE_TIMEOUT

    async with IdleTestServer(create_app(services)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        await writer.drain()
        async with asyncio.timeout(10):
            closed = await reader.read()  # returns b"" once the server closes
        writer.close()
    assert closed == b""


class IdleTestServer(TestServer):
    """As `carnet run` serves, with a one-second idle timeout to keep the test short."""

    async def _make_runner(self, **kwargs: Any) -> ProblemRunner:
        return ProblemRunner(self.app, **{**kwargs, "keepalive_timeout": 1.0})
