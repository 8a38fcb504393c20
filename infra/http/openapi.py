"""OpenAPI 3.1, generated from the route table and the msgspec types."""

import re
from typing import Any

import msgspec

from infra.http.routes import ROUTES, Route
from infra.http.schemas import Problem
from infra.http.wire import MIN_POSITION_HEADER, MIN_POSITION_PARAM

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
    429: "Throttled",
    503: "Database unreachable, or a read model not caught up in time; see Retry-After",
}


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
        position = {"type": "integer", "minimum": 1}
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
            "required": True,
            "content": {"application/json": {"schema": refs[route.body]}},
        }
    if route.response is not None:
        for status in (route.status, *route.also):
            op["responses"][str(status)] = {
                "description": route.summary if status < 300 else _STATUS_TEXT[status],
                "content": {"application/json": {"schema": refs[route.response]}},
            }
    for status in route.errors:
        op["responses"][str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
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
