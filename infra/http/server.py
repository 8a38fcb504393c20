"""Serving the app so that even the HTTP parser's refusals are problem+json.

A request aiohttp cannot parse (a huge header, a bare CR, a bad
Content-Length) never reaches the app or its middlewares: the protocol
handler answers it itself, in text/plain, and logs it at ERROR with a trace.
`ProblemRunner` serves the app with a handler whose answer is an RFC 9457
problem like every other refusal, logged at INFO: it is the client's
mistake, not ours, and anyone could otherwise fill the log with traces.

It also closes a connection that has not sent a whole request within
`IDLE_TIMEOUT` seconds (aiohttp's keep-alive timeout, which also covers a
connection's first request; its default is an hour), so half-sent requests
cannot hold connections open for long. Capping how many connections a client
may open is a job for the reverse proxy in front (docs/operations.md).
"""

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from infra.http.schemas import Problem
from infra.http.wire import PROBLEM_BASE, problem_response

log = logging.getLogger("carnet.http")
IDLE_TIMEOUT = 15.0  # seconds a connection may stay open without a whole request


def _printable(message: str) -> str:
    """The parser's words may quote the client's bytes: keep them inert and short."""
    return message.encode("ascii", "backslashreplace").decode()[:200]


class _ProblemRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("response already sent, cannot answer the parser's error")
        log.info("refused a malformed request from %s: %s", request.remote, _printable(str(exc)))
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        code, detail = "malformed-request", _printable(message or "")
        response = problem_response(
            Problem(type=PROBLEM_BASE + code, title=phrase, status=status, detail=detail)
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemRunner(web.AppRunner):
    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the protocol class; the server it built is
        # given the subclass that only changes which handler it makes.
        server.__class__ = _ProblemServer
        return server
