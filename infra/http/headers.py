r"""Header values as Carnet keeps them: escaped, bounded, safe to store and log.

A header is bytes. aiohttp decodes them as UTF-8 and hands on each byte that
is not UTF-8 as a lone surrogate (U+DC80 to U+DCFF, Python's "surrogateescape"),
which no encoder will write. So every header value that reaches the access
ledger (`User-Agent`, `X-Purpose-Of-Use`), the events' metadata
(`X-Correlation-Id`), the logs or a response goes through `escaped` first:

- a printable character (letters, digits, punctuation, the space, and any
  printable non-ASCII character such as `é`) is kept as it is;
- a backslash is doubled: `\\`;
- anything else, i.e. a byte that is not UTF-8, a control character (TAB,
  C1 controls such as U+0085), a format character (such as the bidi
  override U+202E), a line or paragraph separator or a non-ASCII space, is
  written as the bytes the client sent for it, each as `\xNN` (two
  lower-case hex digits): the byte 0xFF is `\xff`, U+0085 is `\xc2\x85`.
- the result is cut to a bound (200 characters for `User-Agent`, 64 for
  the others), never inside an escape.

The form can be read back to the exact bytes sent (undo `\\` and `\xNN`),
is printable Unicode that every encoder and PostgreSQL accept, and
cannot inject a line, a terminal sequence or a reversed text into a log.

`X-Request-Id` is echoed in every response, so it is kept only when it is
a safe token: 1 to 64 of the characters `A-Z a-z 0-9 - . _ : / + = @`
(a longer one is cut to 64). Any other value is replaced by a fresh id
(32 hex digits), which is what the response echoes and what the ledger and
the metadata name.
"""

import re
import uuid
from typing import cast

from aiohttp import web
from aiohttp.web_log import AccessLogger
from multidict import CIMultiDict

USER_AGENT_LIMIT = 200
LIMIT = 64  # X-Purpose-Of-Use, X-Correlation-Id, X-Request-Id

_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]+")


def _sent_bytes(char: str) -> bytes:
    """The bytes the client sent for one decoded character."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as aiohttp passes it on
        return bytes([code - 0xDC00])
    return char.encode("utf-8", "surrogatepass")


def escaped(value: str, limit: int = LIMIT) -> str:
    """The value in the form above: printable, backslash-escaped, at most `limit` long."""
    if len(value) <= limit and value.isprintable() and "\\" not in value:
        return value  # the common case costs two C-speed scans
    pieces: list[str] = []
    size = 0
    for char in value[:limit]:  # each character gives at least one: no more is needed
        if char == "\\":
            piece = "\\\\"
        elif char.isprintable():
            piece = char
        else:
            piece = "".join(f"\\x{b:02x}" for b in _sent_bytes(char))
        size += len(piece)
        if size > limit:
            break
        pieces.append(piece)
    return "".join(pieces)


def header(request: web.BaseRequest, name: str, default: str = "", limit: int = LIMIT) -> str:
    """The request's header `name`, escaped and bounded; `default` when absent or empty."""
    return escaped(request.headers.get(name, ""), limit) or default


def request_id(sent: str) -> str:
    """The client's X-Request-Id if it is a safe token (cut to 64), else a fresh one."""
    sent = sent[:LIMIT]
    return sent if _SAFE_ID.fullmatch(sent) else uuid.uuid4().hex


# What Carnet's access log says of a request: when, the request line, the status,
# the size, the time taken and its request id; not the client's address nor its
# user agent, which are personal data (the access ledger keeps them, sealed
# under the person's key: infra/keyring.py).
ACCESS_LOG_FORMAT = '%t "%r" %s %b %Tf "%{X-Request-Id}o"'


class EscapingAccessLogger(AccessLogger):
    """aiohttp's access log with every request header escaped as above."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        super().log(cast(web.BaseRequest, _EscapedHeaders(request)), response, time)


class _EscapedHeaders:
    """A request whose headers read back escaped; everything else is the request's."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.headers = CIMultiDict(
            (k, escaped(v, USER_AGENT_LIMIT)) for k, v in request.headers.items()
        )

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)
