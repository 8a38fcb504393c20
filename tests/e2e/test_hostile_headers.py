"""Hostile header bytes on audited routes: the ledger keeps them escaped and
bounded, the request gets a 2xx or a 4xx (never a 5xx), and other users'
reads in the same group-committed batch are not failed by them.

aiohttp's own client refuses to send such bytes, so these requests are
written by hand on a raw socket."""

import asyncio
import logging
import re
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from domain.ledger import LEDGER_ID
from infra.http.app import create_app
from infra.http.headers import EscapingAccessLogger, escaped
from infra.http.keys import Services
from infra.keyring import TEXT_PREFIX, opened
from infra.ledger import read_chain, verify_ledger
from tests.e2e.support import PROBLEM_JSON, WEDNESDAY, paris
from tests.world import World

AUDITED_HEADERS = (b"User-Agent", b"X-Purpose-Of-Use", b"X-Request-Id", b"X-Correlation-Id")
HOSTILE = {
    # Bytes that are not UTF-8: aiohttp hands them on as lone surrogates.
    "invalid-utf8": b"\xff\xfe\xc3(\xed\xa0\x80ok",
    # The controls the HTTP parser lets through: TAB, NEL, CSI, a bidi override.
    "controls": b"\tA\xc2\x85B\xc2\x9b[31m\xe2\x80\xaeC",
    # Just under the parser's 8190-byte limit, one bad byte first.
    "long": b"\xff" + b"\xc3\xa9" * 3999,
}
# Refused by aiohttp's parser before any middleware runs: they must stay 4xx.
PARSER_REFUSED = (b"a\x01\x1b[2J\x7fb", b"a" * 10_240)
SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,64}")


class Raw(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes


async def send_raw(
    server: BaseTestServer,
    path: str,
    headers: list[tuple[bytes, bytes]],
    method: bytes = b"GET",
    body: bytes = b"",
) -> Raw:
    """One HTTP/1.1 request written byte for byte; the connection is closed after it."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        head = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: test", b"Connection: close"]
        head += [name + b": " + value for name, value in headers]
        if body:
            head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return Raw(int(status_line.split()[1]), fields, payload)


def bearer(world: World, who: str) -> tuple[bytes, bytes]:
    return b"Authorization", f"Bearer {world.tokens[who]}".encode()


def assert_no_server_error(answer: Raw, parser_refused: bool = False) -> None:
    assert answer.status < 500, answer
    if parser_refused:
        # aiohttp's parser answers these itself (its 400 is not problem+json yet).
        assert answer.status == 400, answer
        return
    if answer.status >= 400:
        assert answer.headers["Content-Type"].startswith(PROBLEM_JSON), answer
    # The request id echoed back is a safe token, never the bytes sent.
    assert SAFE_ID.fullmatch(answer.headers["X-Request-Id"]), answer


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_header_bytes_never_answer_5xx_nor_fail_other_users_reads(
    client: TestClient, world: World, pool: Any, kind: str
):
    assert client.server is not None
    me = f"/patients/{world.patient}"
    hostile = [(name, HOSTILE[kind], False) for name in AUDITED_HEADERS] * 5
    hostile += [(name, value, True) for name in AUDITED_HEADERS for value in PARSER_REFUSED]
    # 150 reads by other users, sent while the hostile requests are in flight,
    # so that they share the ledger's group-committed batches.
    readers = [
        ("other_patient", f"/patients/{world.other_patient}"),
        ("admin", f"/patients/{world.other_patient}"),
        ("admin", f"/patients/{world.patient}"),
    ]
    reads = [readers[i % 3] for i in range(150)]

    async def read(who: str, path: str) -> int:
        async with client.get(path, headers=world.auth(who)) as answer:
            return answer.status

    answers = await asyncio.gather(
        *(
            send_raw(client.server, me, [bearer(world, "patient"), (name, value)])
            for name, value, _ in hostile
        ),
        *(read(who, path) for who, path in reads),
    )

    for (_, _, refused), answer in zip(hostile, answers[: len(hostile)], strict=True):
        assert isinstance(answer, Raw)
        assert_no_server_error(answer, refused)
    assert answers[len(hostile) :] == [200] * len(reads)
    assert await verify_ledger(pool) is None


async def test_the_ledger_keeps_header_values_escaped_and_bounded_and_still_verifies(
    client: TestClient, world: World, pool: Any
):
    assert client.server is not None
    answer = await send_raw(
        client.server,
        f"/patients/{world.patient}",
        [
            bearer(world, "patient"),
            (b"User-Agent", b"bot\xff\xc2\x85\\" + b"\xc3\xa9" * 300),
            (b"X-Purpose-Of-Use", b"care\t\xe2\x80\xae!"),
            (b"X-Request-Id", b"id\xff"),
        ],
    )
    assert answer.status == 200, answer

    stored = (await read_chain(pool))[-1].record
    assert stored.user_agent.startswith(TEXT_PREFIX)  # sealed: the chain hashes ciphertext
    entry = opened(stored)
    # Each byte that is not part of a printable character is written \xNN,
    # a backslash is doubled, and the escaped form is cut at 200 characters.
    assert entry.user_agent == ("bot\\xff\\xc2\\x85\\\\" + "é" * 300)[:200]
    assert entry.purpose == "care\\x09\\xe2\\x80\\xae!"
    # A request id that is not a safe token is replaced by a fresh one, which
    # is what the response echoes and what the ledger names.
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-Id"]), answer
    assert entry.request_id == answer.headers["X-Request-Id"]
    assert await verify_ledger(pool) is None


async def test_a_safe_request_id_is_kept_and_a_hostile_correlation_id_is_stored_escaped(
    client: TestClient, world: World, services: Services, pool: Any
):
    assert client.server is not None
    booking = msgspec.json.encode(
        {
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "10:00"),
        }
    )
    answer = await send_raw(
        client.server,
        "/appointments",
        [
            bearer(world, "patient"),
            (b"X-Request-Id", b"req-42.a:b"),
            (b"X-Correlation-Id", b"flow\xff\xc2\x9b" + b"x" * 100),
        ],
        method=b"POST",
        body=booking,
    )
    assert answer.status == 201, answer
    assert answer.headers["X-Request-Id"] == "req-42.a:b"

    metadata = await services.read.pool.fetch(
        "SELECT metadata FROM carnet.events WHERE originator_id <> $1 "
        "AND metadata->>'request_id' = 'req-42.a:b'",
        LEDGER_ID,
    )
    assert metadata, "the booking's events name the request"
    for row in metadata:
        meta = msgspec.json.decode(row[0]) if isinstance(row[0], str | bytes) else row[0]
        assert meta["correlation_id"] == ("flow\\xff\\xc2\\x9b" + "x" * 100)[:64]
    assert (await read_chain(pool))[-1].record.request_id == "req-42.a:b"
    assert await verify_ledger(pool) is None


def unescape(form: str) -> bytes:
    """The bytes a client sent, read back from the escaped form."""
    out, i = bytearray(), 0
    while i < len(form):
        if form.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif form.startswith("\\x", i):
            out.append(int(form[i + 2 : i + 4], 16))
            i += 4
        else:
            out += form[i].encode()
            i += 1
    return bytes(out)


@given(st.binary(max_size=120))
def test_any_header_bytes_escape_to_bounded_printable_text_that_reads_back_exactly(sent: bytes):
    decoded = sent.decode("utf-8", "surrogateescape")  # as aiohttp hands them on
    form = escaped(decoded, 200)
    assert form.isprintable() and len(form) <= 200
    form.encode("utf-8")  # any encoder takes it
    assert unescape(form) == sent
    assert unescape(escaped(decoded, 16)) == sent[: len(unescape(escaped(decoded, 16)))]


async def test_the_access_log_writes_header_values_escaped(
    services: Services, world: World, caplog: pytest.LogCaptureFixture
):
    server = TestServer(create_app(services))
    # What `carnet run` passes to its AppRunner.
    await server.start_server(
        access_log_class=EscapingAccessLogger,
        access_log=logging.getLogger("test.access"),
        access_log_format='"%{User-Agent}i"',
    )
    with caplog.at_level(logging.INFO, "test.access"):
        async with server:  # closing it waits for the request, and its log line
            answer = await send_raw(
                server, f"/patients/{world.patient}", [(b"User-Agent", b"bot\xff\xe2\x80\xae")]
            )
    assert answer.status == 401
    assert caplog.messages == ['"bot\\xff\\xe2\\x80\\xae"']


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_bytes_in_an_idempotency_key_are_refused_naming_it(client, world, kind):
    body = msgspec.json.encode(
        {
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "09:00"),
        }
    )

    answer = await send_raw(
        client.server,
        "/appointments",
        [bearer(world, "patient"), (b"Idempotency-Key", HOSTILE[kind][:200])],
        method=b"POST",
        body=body,
    )

    assert_no_server_error(answer)
    assert answer.status == 400, answer
    assert msgspec.json.decode(answer.body)["field"] == "Idempotency-Key"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_bytes_in_a_bearer_token_are_an_unknown_token(client, world, kind):
    answer = await send_raw(
        client.server,
        f"/patients/{world.patient}",
        [(b"Authorization", b"Bearer " + HOSTILE[kind][:200])],
    )

    assert_no_server_error(answer)
    assert answer.status == 401, answer
    assert msgspec.json.decode(answer.body)["field"] == "Authorization"
