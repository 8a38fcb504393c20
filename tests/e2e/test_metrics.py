"""What /metrics exports, as a scraper sees it: the documented names, buckets
that resolve the SLO, zero-initialised counters, no `_created` series,
OpenMetrics on request, a 405 labelled with its route, and the defences'
counters moving."""

import asyncio
import shutil
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from infra.http.app import create_app
from infra.http.keys import Services
from infra.http.throttle import ThrottlePolicy
from infra.workers import background
from projections import all_projections
from tests.world import World

# The contract of docs/operations.md (Metrics) with the dashboard and the alerts.
EXPORTED = {
    "carnet_build_info": "gauge",
    "carnet_http_requests": "counter",
    "carnet_http_request_duration_seconds": "histogram",
    "carnet_events_appended": "counter",
    "carnet_version_conflicts": "counter",
    "carnet_log_head_position": "gauge",
    "carnet_log_head_timestamp_seconds": "gauge",
    "carnet_projection_events_applied": "counter",
    "carnet_projection_position": "gauge",
    "carnet_projection_running": "gauge",
    "carnet_projection_lag_events": "gauge",
    "carnet_projection_lag_seconds": "gauge",
    "carnet_projection_stopped": "gauge",
    "carnet_relay_published": "counter",
    "carnet_relay_refused": "counter",
    "carnet_nats_stream_holes": "counter",
    "carnet_database_up": "gauge",
    "carnet_db_pool_size": "gauge",
    "carnet_db_pool_max": "gauge",
    "carnet_db_pool_in_use": "gauge",
    "carnet_db_pool_waiting": "gauge",
    "carnet_event_loop_lag_seconds": "gauge",
    "carnet_ledger_entries": "counter",
    "carnet_ledger_failures": "counter",
    "carnet_ledger_batch_entries": "histogram",
    "carnet_ledger_write_duration_seconds": "histogram",
    "carnet_ledger_verify_ok": "gauge",
    "carnet_ledger_verify_timestamp_seconds": "gauge",
    "carnet_ledger_verified_entries": "gauge",
    "carnet_throttled": "counter",
    "carnet_enumeration_suspected": "counter",
    "carnet_token_suspensions": "counter",
}
SLO_BUCKETS = [0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05]


async def scrape(client: TestClient, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200
    return await response.text(), response.headers["Content-Type"]


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def wait_for_verification(client: TestClient) -> str:
    # The ledger's first verification runs as the process starts, in the background.
    for _ in range(100):
        text, _ = await scrape(client)
        if "carnet_ledger_verify_ok" in text:
            return text
        await client.get("/healthz")
    raise AssertionError("no ledger verification in /metrics")


async def test_every_documented_metric_is_exported_with_its_type(client, world: World):
    await client.get("/healthz")
    text = await wait_for_verification(client)
    found = families(text)

    for name, kind in EXPORTED.items():
        assert name in found, name
        assert found[name].type == kind, name
    assert "_created" not in text
    (info,) = found["carnet_build_info"].samples
    assert info.value == 1 and info.labels["version"] and info.labels["python"]
    assert found["carnet_database_up"].samples[0].value == 1
    assert found["carnet_ledger_verify_ok"].samples[0].value == 1


async def test_latency_buckets_resolve_the_slo(client):
    await client.get("/healthz")
    found = families((await scrape(client))[0])
    bounds = {
        float(s.labels["le"])
        for s in found["carnet_http_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["route"] == "/healthz"
    }
    assert set(SLO_BUCKETS) <= bounds
    assert max(b for b in bounds if b != float("inf")) == 10


async def test_openmetrics_is_served_when_the_scraper_asks(client):
    text, content_type = await scrape(
        client, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    assert "_created" not in text
    plain, content_type = await scrape(client)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# EOF" not in plain


async def test_a_405_is_counted_under_its_route(client):
    labels = {"method": "DELETE", "route": "/healthz", "status": "405"}
    before = REGISTRY.get_sample_value("carnet_http_requests_total", labels) or 0

    response = await client.delete("/healthz")

    assert response.status == 405
    assert REGISTRY.get_sample_value("carnet_http_requests_total", labels) == before + 1
    # A path no route has stays `unmatched` (401 here: it needs a token like any other).
    unmatched = {"method": "GET", "route": "unmatched", "status": "401"}
    misses = REGISTRY.get_sample_value("carnet_http_requests_total", unmatched) or 0
    assert (await client.get("/no/such/path")).status == 401
    assert REGISTRY.get_sample_value("carnet_http_requests_total", unmatched) == misses + 1


async def test_every_route_has_a_latency_series_before_its_first_request(client):
    found = families((await scrape(client))[0])
    routes = {
        (s.labels["method"], s.labels["route"])
        for s in found["carnet_http_request_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert ("POST", "/appointments") in routes
    assert ("GET", "/appointments/{appointment_id}") in routes


def test_labelled_counters_start_at_zero_in_a_fresh_process():
    # A process of its own: this one's registry has counted the other tests.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from infra.metrics import exposition; print(exposition(None)[0].decode())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(done.stdout)
        for s in f.samples
    }
    expected = [("carnet_throttled_total", (("reason", r),)) for r in ("rate", "enumeration")]
    expected += [
        ("carnet_relay_refused_total", (("reason", r),)) for r in ("stream-moved", "lost-lock")
    ]
    for p in all_projections():
        expected += [
            ("carnet_projection_events_applied_total", (("projection", p.name),)),
            ("carnet_nats_stream_holes_total", (("projection", p.name),)),
        ]
    for key in expected:
        assert samples.get(key) == 0, key
    assert "_created" not in done.stdout


async def test_promtool_accepts_the_exposition(client):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    await client.get("/healthz")
    await client.delete("/healthz")
    text, _ = await scrape(client)
    done = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_an_enumeration_counts_a_throttle_and_a_suspension(
    services: Services, pool: Any, world: World
):
    policy = ThrottlePolicy(rate_per_second=1e9, burst=10**9, enumeration_misses=3)
    suspended = REGISTRY.get_sample_value("carnet_token_suspensions_total") or 0
    throttled = {"reason": "enumeration"}
    before = REGISTRY.get_sample_value("carnet_throttled_total", throttled) or 0
    suspected = REGISTRY.get_sample_value("carnet_enumeration_suspected_total") or 0
    async with (
        background(pool, None, verify_every=None),
        TestClient(TestServer(create_app(services, policy))) as client,
    ):
        statuses = [
            (
                await client.get(f"/appointments/{uuid.uuid4()}", headers=world.auth("patient"))
            ).status
            for _ in range(4)
        ]
    assert statuses == [404, 404, 429, 401]
    assert REGISTRY.get_sample_value("carnet_token_suspensions_total") == suspended + 1
    assert REGISTRY.get_sample_value("carnet_throttled_total", throttled) == before + 1
    assert REGISTRY.get_sample_value("carnet_enumeration_suspected_total") == suspected + 1
