"""Turning requests into typed values and results into responses."""

import re
import unicodedata
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes
from uuid import UUID

import msgspec
from aiohttp import web

from domain.errors import NotFound
from infra.http.schemas import Problem

T = TypeVar("T")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://carnet.dev/problems/"
MAX_BODY = 64 * 1024
POSITION_HEADER = "Carnet-Position"
MIN_POSITION_HEADER = "Carnet-Min-Position"
MIN_POSITION_PARAM = "min_position"

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# Instants the domain can safely compute with: near the ends of the calendar,
# shifting to UTC or adding a duration overflows.
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(3000, 1, 1, tzinfo=UTC)


class HTTPProblem(Exception):
    """A refusal that is already an HTTP answer (raised by the edge itself)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str = "",
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(
            type=PROBLEM_BASE + code, title=title, status=status, detail=detail, field=field
        )
        self.headers = headers or {}


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(problem),
        status=problem.status,
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def _field_of(error: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """Split msgspec's "Expected `int`, got `str` - at `$.a[0].b`" into detail and field."""
    message = str(error)
    match = _AT_PATH.search(message)
    if not match:
        missing = re.search(r"missing required field `([^`]+)`", message)
        if missing:
            return message, missing.group(1)
        unknown = re.search(r"unknown field `([^`]+)`", message)
        return message, unknown.group(1) if unknown else prefix
    path = match.group("path").lstrip(".")
    detail = message[: match.start()]
    unknown = re.search(r"(?:unknown|missing required) field `([^`]+)`", detail)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return detail, path or prefix


def _bad_input(error: msgspec.ValidationError, prefix: str) -> HTTPProblem:
    detail, field = _field_of(error, prefix)
    if "matching regex" in detail and "x00-" in detail:
        # Our text patterns (schemas.ONE_LINE / MULTI_LINE), said in words.
        detail = "control characters (NUL, C0, C1) and unpaired surrogates are not allowed"
    return HTTPProblem(400, "invalid-input", "The request is invalid", detail, field)


def _nfc(value: Any) -> Any:
    """Every string of a decoded request, normalised to NFC, in place.

    The same text must be the same bytes in the log, whatever the client's
    keyboard composed; searching and scoping compare them.
    """
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    for attr in getattr(value, "__struct_fields__", ()):
        found = getattr(value, attr)
        if isinstance(found, str | list) or hasattr(found, "__struct_fields__"):
            setattr(value, attr, _nfc(found))
    return value


def _check_times(value: T) -> T:
    """Refuse, naming the field, a timestamp without an offset or out of range."""
    names = getattr(value, "__struct_encode_fields__", ())
    for attr, name in zip(getattr(value, "__struct_fields__", ()), names, strict=True):
        found = getattr(value, attr)
        if isinstance(found, datetime):
            if found.utcoffset() is None:
                raise HTTPProblem(
                    400, "invalid-input", "The request is invalid", "give a UTC offset", name
                )
            instant = found
        elif isinstance(found, date):
            instant = datetime.combine(found, time(), tzinfo=UTC)
        else:
            continue
        if not _EARLIEST <= instant < _LATEST:
            raise HTTPProblem(
                400, "invalid-input", "The request is invalid", "years 1900 to 2999 only", name
            )
    return value


async def read_body(request: web.Request, cls: type[T]) -> T:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise HTTPProblem(413, "too-large", "The body is too large", field="body")
    if request.content_type != "application/json":
        raise HTTPProblem(
            415, "unsupported-media-type", "Send application/json", field="Content-Type"
        )
    raw = await request.read()
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    try:
        return _check_times(_nfc(decoder.decode(raw)))
    except msgspec.ValidationError as e:
        raise _bad_input(e, "body") from None
    except msgspec.DecodeError as e:
        raise HTTPProblem(
            400, "malformed-json", "The body is not valid JSON", str(e), "body"
        ) from None


_DIGITS = re.compile(r"[0-9]{1,18}")


def digits(raw: str, field: str) -> int:
    """A number as a query string or header gives it: ASCII digits only.

    Not int(): that also takes "٣", " 3", "+3" and "1_0"; msgspec's lax mode
    takes "1e3". A client that sends those has a bug we should tell it about.
    """
    if not _DIGITS.fullmatch(raw):
        raise HTTPProblem(
            400, "invalid-input", "The request is invalid", "ASCII digits only (0-9)", field
        )
    return int(raw)


def _fields_of(cls: type, kinds: tuple[type, ...]) -> frozenset[str]:
    """The query fields whose type is one of `kinds`, by their names on the wire."""
    found = _FIELDS_OF.get((cls, kinds))
    if found is None:
        info = msgspec.inspect.type_info(cls)
        found = frozenset(
            f.encode_name for f in getattr(info, "fields", ()) if _is_a(f.type, kinds)
        )
        _FIELDS_OF[(cls, kinds)] = found
    return found


def _is_a(t: msgspec.inspect.Type, kinds: tuple[type, ...]) -> bool:
    if isinstance(t, msgspec.inspect.Metadata):  # Annotated with constraints or a description
        return _is_a(t.type, kinds)
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_a(u, kinds) for u in t.types)
    return isinstance(t, kinds)


_FIELDS_OF: dict[tuple[type, tuple[type, ...]], frozenset[str]] = {}
_NUMBER = (msgspec.inspect.IntType,)
_TIME = (msgspec.inspect.DateTimeType, msgspec.inspect.DateType)
# What a date or time in a query must look like before msgspec reads it: its
# lax mode would also take "null" (no filter at all) and numbers (Unix times).
_TIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9:.]+([Zz]|[+-][0-9]{2}:[0-9]{2}))?")


def _check_encoding(request: web.Request) -> None:
    """Refuse a query string whose escapes are not UTF-8, naming the parameter.

    aiohttp decodes them to U+FFFD, which would search for something the
    client never meant (`city=%FF` finding nothing, answered 200).
    """
    raw = request.rel_url.raw_query_string
    if "%" not in raw:
        return
    for pair in raw.split("&"):
        key, _, value = pair.partition("=")
        for part, field in ((key, "query"), (value, None)):
            try:
                unquote_to_bytes(part.replace("+", " ")).decode("utf-8")
            except UnicodeDecodeError:
                name = field or unquote_to_bytes(key).decode("utf-8", "backslashreplace")
                raise HTTPProblem(
                    400,
                    "invalid-input",
                    "The request is invalid",
                    "percent-escapes must encode UTF-8",
                    name,
                ) from None


def min_position(request: web.Request) -> int | None:
    """The read-your-writes position a request names, if any; each spelling is checked.

    Present but empty is a client bug too, and so is a parameter given twice:
    neither may be dropped in favour of the other.
    """
    position: int | None = None
    if MIN_POSITION_PARAM in request.query:
        values = request.query.getall(MIN_POSITION_PARAM)
        if len(values) != 1:
            raise HTTPProblem(
                400,
                "invalid-input",
                "Give each parameter once",
                "given more than once",
                MIN_POSITION_PARAM,
            )
        position = digits(values[0], MIN_POSITION_PARAM)
    if MIN_POSITION_HEADER in request.headers:
        position = digits(request.headers[MIN_POSITION_HEADER], MIN_POSITION_HEADER)
    return position


def read_query(request: web.Request, cls: type[T]) -> T:
    _check_encoding(request)
    min_position(request)  # read-your-writes is `consistent`'s, but checked for every route
    params: dict[str, str] = {}
    numbers, times = _fields_of(cls, _NUMBER), _fields_of(cls, _TIME)
    for key in request.query:
        if key == MIN_POSITION_PARAM:
            continue
        values = request.query.getall(key)
        if len(values) != 1:
            raise HTTPProblem(
                400, "invalid-input", "Give each parameter once", "given more than once", key
            )
        if key in numbers:
            digits(values[0], key)
        if key in times and not _TIME_TEXT.fullmatch(values[0]):
            raise HTTPProblem(
                400, "invalid-input", "A date (2026-12-01) or an RFC 3339 time", field=key
            )
        params[key] = values[0]
    try:
        query = _check_times(_nfc(msgspec.convert(params, cls, strict=False)))
    except msgspec.ValidationError as e:
        raise _bad_input(e, "query") from None
    # A filter given is a filter: lax msgspec reads `null` as None for an
    # optional id or choice, which would answer everything unfiltered.
    names = dict(zip(cls.__struct_encode_fields__, cls.__struct_fields__, strict=True))  # type: ignore[attr-defined]
    for name in params:
        if name in names and getattr(query, names[name]) is None:
            raise HTTPProblem(
                400, "invalid-input", "The request is invalid", "a value, not null", name
            )
    return query


# The one spelling of an id: UUID() also takes braces, "urn:uuid:" and no
# hyphens, and the same record must not answer under several names.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def path_id(request: web.Request, name: str, what: str) -> UUID:
    """A malformed id is, to the caller, just another id that does not exist."""
    raw = request.match_info[name]
    if not _UUID.fullmatch(raw):
        # Exactly the refusal the services give for an unknown or foreign id.
        raise NotFound(f"no such {what}", field=name)
    return UUID(raw)


def reply(obj: Any, status: int = 200, position: int | None = None) -> web.Response:
    headers = {POSITION_HEADER: str(position)} if position else None
    return web.Response(
        body=_encoder.encode(obj), status=status, content_type="application/json", headers=headers
    )
