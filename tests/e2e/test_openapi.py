"""The served OpenAPI document describes the API the app really routes."""

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.support import PROBLEM_JSON, ok

UNDOCUMENTED = {"/openapi.json", "/metrics"}
PATH_PARAM = re.compile(r"{(\w+)}")


@pytest.fixture
async def document(client) -> dict[str, Any]:
    found: dict[str, Any] = await ok(await client.get("/openapi.json"))
    return found


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


async def test_the_document_is_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] and document["info"]["version"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_every_routed_operation_is_documented(client, document):
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical not in UNDOCUMENTED
        and route.method != "HEAD"
    }
    documented = {(method, path) for path, method, _ in operations(document)}

    assert len(routed) >= 20
    assert routed == documented


async def test_every_operation_documents_its_success_and_its_errors(document):
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))
    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        responses = {int(code): spec for code, spec in op["responses"].items()}
        successes = [code for code in responses if 200 <= code < 300]
        assert len(successes) == 1, where
        assert "application/json" in responses[successes[0]]["content"], where

        expected = set()
        if "security" in op:
            expected |= {401, 503}  # authentication reads the token store
        if PATH_PARAM.search(path):
            expected.add(404)
        if "requestBody" in op:
            expected |= {400, 413, 415, 422}
        if any(p["in"] == "query" for p in op["parameters"]):
            expected.add(400)
        if path == "/readyz":
            expected.add(503)
        assert expected <= set(responses), f"{where} lacks {expected - set(responses)}"
        for code in (c for c in responses if c >= 400):
            content = responses[code]["content"]
            if path == "/readyz":  # readiness answers its health body, even when not ready
                assert content["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Health"
                }
                continue
            assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert responses[code]["description"], where


async def test_every_documented_parameter_exists_on_its_route(document):
    for path, method, op in operations(document):
        in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert in_path == set(PATH_PARAM.findall(path)), f"{method} {path}"
    availability = document["paths"]["/practitioners/{practitioner_id}/availability"]["get"]
    query = {p["name"]: p["required"] for p in availability["parameters"] if p["in"] == "query"}
    assert query == {"motive_id": True, "from": True, "to": True, "min_position": False}
    booking = document["paths"]["/appointments"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in booking["parameters"] if p["in"] == "header"}


async def test_every_reference_resolves_in_components(document):
    found = list(refs(document))

    assert "#/components/schemas/BookAppointment" in found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert isinstance(resolve(document, ref), dict)
    problem = resolve(document, "#/components/schemas/Problem")
    assert {"type", "title", "status"} <= set(problem["required"])
    assert "field" in problem["properties"]


async def test_a_body_is_marked_required_unless_the_route_takes_none(document):
    # Rotation works without a body (tests/e2e/test_token_admin.py); the others need one.
    ops = document["paths"]
    rotate = ops["/admin/tokens/{token_id}/rotate"]["post"]["requestBody"]
    assert rotate["required"] is False
    assert ops["/appointments"]["post"]["requestBody"]["required"] is True
