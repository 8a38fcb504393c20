"""Serving the app so that even the HTTP parser's refusals are problem+json.

A request aiohttp cannot parse (a huge header, a bare CR, a bad
Content-Length) never reaches the app or its middlewares: the protocol
handler answers it itself, in text/plain. `ProblemRunner` serves the app with
a handler whose answer is an RFC 9457 problem like every other refusal.
"""

from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from infra.http.schemas import Problem
from infra.http.wire import PROBLEM_BASE, problem_response


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
        super().handle_error(request, status, exc, message)  # logs; raises if already sent
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        code = "malformed-request" if status < 500 else "internal"
        detail = _printable(message or "") if status < 500 else ""
        response = problem_response(
            Problem(type=PROBLEM_BASE + code, title=phrase, status=status, detail=detail)
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the protocol class; the server it built is
        # given the subclass that only changes which handler it makes.
        server.__class__ = _ProblemServer
        return server
