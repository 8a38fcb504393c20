"""OpenAPI 3.1, generated from the route table and the msgspec types."""

import re
from typing import Any

import msgspec

from infra.http.routes import ROUTES, Route
from infra.http.schemas import Problem
from infra.http.wire import MIN_POSITION_HEADER, MIN_POSITION_PARAM, POSITION_HEADER

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"{(\w+)}")
_STATUS_TEXT = {
    400: "Invalid input; `field` names it",
    401: "Missing or unknown bearer token",
    403: "This actor may not do this to an object it can see",
    404: "No such object, or not one this actor may see (identical answers)",
    409: "Conflict: the slot is taken, or a concurrent change won",
    413: "Body too large",
    415: "Body is not application/json",
    422: "A domain rule refuses the request",
    429: "Throttled: too fast, or too many look-ups of objects it cannot see; see Retry-After",
    503: "Database unreachable, or a read model not caught up in time; see Retry-After",
}


_DIGITS = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "This request's id (the client's X-Request-Id if it is a safe token)",
        "schema": {"type": "string"},
    },
    POSITION_HEADER: {
        "description": "The log position this answer reflects or this change reached",
        "schema": _DIGITS,
    },
    "Location": {"description": "Where the created object is", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "true when this answers a repeated Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": _DIGITS,
    },
}
_SUCCESS_HEADERS = ("X-Request-Id", POSITION_HEADER)
_CREATED_HEADERS = (*_SUCCESS_HEADERS, "Location", "Idempotent-Replayed")


def _headers(names: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {n: {**_HEADERS[n], "required": n in required} for n in names}


def _query_parameters(query: type, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([query], ref_template=_REF)
    name = ref["$ref"].rsplit("/", 1)[-1]
    struct = components[name]
    required = set(struct.get("required", []))
    return [
        {"name": prop, "in": "query", "required": prop in required, "schema": schema}
        for prop, schema in struct["properties"].items()
    ]


def _operation(route: Route, refs: dict[type, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for p in _PATH_PARAM.findall(route.path)
    ]
    params += [
        {
            "name": header,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
        for header in route.headers
    ]
    if route.query is not None:
        params += _query_parameters(route.query, schemas)
    if route.read_model:
        position = _DIGITS
        description = "Wait until the read model holds this log position (read your writes)"
        params += [
            {
                "name": MIN_POSITION_HEADER,
                "in": "header",
                "required": False,
                "schema": position,
                "description": description,
            },
            {
                "name": MIN_POSITION_PARAM,
                "in": "query",
                "required": False,
                "schema": position,
                "description": description,
            },
        ]
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": params,
        "responses": {},
    }
    if route.body is not None:
        op["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": refs[route.body]}},
        }
    if route.response is not None:
        for status in (route.status, *route.also):
            op["responses"][str(status)] = {
                "description": route.summary if status < 300 else _STATUS_TEXT[status],
                "headers": _headers(
                    _CREATED_HEADERS
                    if status == 201
                    else _SUCCESS_HEADERS
                    if status < 300
                    else ("X-Request-Id", "Retry-After")
                ),
                "content": {
                    "application/json": {"schema": refs[route.response]},
                    # Another representation (a FHIR R4 Bundle), named by its media type.
                    **{media: {"schema": {"type": "object"}} for media in route.media},
                },
            }
    # Any authenticated call may be throttled, and any call may meet a
    # database that does not answer in time.
    errors = {*route.errors, 503} | (set() if route.public else {429})
    for status in sorted(errors):
        if str(status) in op["responses"]:
            continue
        retry = ("Retry-After",) if status in (429, 503) else ()
        op["responses"][str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "headers": _headers(("X-Request-Id", *retry), required=retry),
            "content": {"application/problem+json": {"schema": refs[Problem]}},
        }
    if not route.public:
        op["security"] = [{"bearer": []}]
    return op


def openapi_document() -> dict[str, Any]:
    types = sorted(
        {t for r in ROUTES for t in (r.body, r.response) if t is not None} | {Problem},
        key=lambda t: t.__name__,
    )
    ref_list, schemas = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, ref_list, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Carnet",
            "version": "0.1.0",
            "description": "Event-sourced booking of medical appointments.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
