"""/metrics under attack: what a client sends must not mint series without
bound (methods, paths), and a scraper's hostile Accept header is answered."""

import asyncio

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.world import World


def _label_values(text: str, name: str, label: str) -> set[str]:
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(name) and label in sample.labels:
                found.add(sample.labels[label])
    return found


async def _metrics(client: TestClient, accept: str | None = None) -> str:
    headers = {"Accept": accept} if accept is not None else {}
    answer = await client.get("/metrics", headers=headers)
    assert answer.status == 200, await answer.text()
    return await answer.text()


async def test_arbitrary_methods_and_paths_do_not_mint_series(client: TestClient, world: World):
    admin = world.auth("admin")
    # aiohttp's C parser takes some 35 methods (WebDAV's among them) and
    # refuses others; its pure-Python parser (AIOHTTP_NO_EXTENSIONS) takes any.
    methods = ["PROPFIND", "MKCOL", "PURGE", "SEARCH", "LINK", "UNLINK", "REPORT", "TRACE"]
    for n in range(30):
        for path in ("/admin/tokens", f"/no/such/{n}", f"/appointments/{n}"):
            for method in (*methods, f"FOO{n}"):
                answer = await client.request(method, path, headers=admin)
                assert 400 <= answer.status < 500
    long_method = "X" * 5000
    answer = await client.request(long_method, "/admin/tokens", headers=admin)
    assert answer.status < 500
    text = await _metrics(client)
    labelled = _label_values(text, "carnet_http_request", "method")
    known = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert labelled <= known, sorted(labelled - known)[:10]
    assert long_method not in text
    routes = _label_values(text, "carnet_http_requests_total", "route")
    assert not any("/no/such/" in r for r in routes)
    assert "unmatched" in routes and "/admin/tokens" in routes


async def test_hostile_accept_headers_get_an_answer(client: TestClient):
    for accept in (
        "application/openmetrics-text; version=9.9.9",
        "application/openmetrics-text; escaping=nonsense",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
        "application/openmetrics-text; version",
        ";;;,,,",
        "text/plain; version=0.0.4; escaping=" + "x" * 3000,
        "*/*;q=abc",
        "\u00e9t\u00e9",
    ):
        sent = accept.encode("utf-8").decode("latin-1")  # raw bytes, as a client may send
        answer = await client.get("/metrics", headers={"Accept": sent})
        assert answer.status < 500, (accept, answer.status, await answer.text())
        if answer.status == 200:
            body = await answer.text()
            assert "carnet_build_info" in body


async def test_concurrent_scrapes_are_whole(client: TestClient):
    texts = await asyncio.gather(*(_metrics(client) for _ in range(8)))
    for text in texts:
        assert "carnet_build_info" in text
