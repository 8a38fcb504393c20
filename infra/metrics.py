"""Prometheus metrics. One registry per process, defined once here.

Conventions (docs/operations.md, Metrics): durations end in `_duration_seconds`,
sizes name their unit; labelled counters exist at zero for every label value
known in advance, so that `rate()` answers before the first event; no `_created`
series; `/metrics` offers OpenMetrics to a scraper that asks for it
(`exposition`, used by the app and by `infra.metrics_server` alike).

`CARNET_METRICS_DISABLED=1` in the environment when this module is first
imported makes every metric here a no-op. It exists for the metrics-overhead
benchmark's baseline (tests/bench/metrics_overhead.py) and nothing else: it is
not a setting, and such a process exports nothing of its own.
"""

import importlib.metadata
import os
import platform
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from projections import all_projections

# No `<name>_created` series: they double the series count and no alert uses them.
prometheus_client.disable_created_metrics()

DISABLED = os.environ.get("CARNET_METRICS_DISABLED", "") not in ("", "0")

M = TypeVar("M", Counter, Gauge, Histogram)


class _Noop:
    """Stands in for any metric when metrics are disabled: every call does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> "_Noop":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


def _made(metric: type[M], *args: Any, **kwargs: Any) -> M:
    if DISABLED:
        return cast(M, _Noop())
    return metric(*args, **kwargs)


def _zero(metric: Counter | Histogram, values: Iterable[str]) -> None:
    """Create the child of every label value known in advance (one label only)."""
    for value in values:
        metric.labels(value)


# -- build --------------------------------------------------------------------


def _revision() -> str:
    """CARNET_REVISION, else the commit of the checkout we run from (read, not `git`)."""
    if revision := os.environ.get("CARNET_REVISION", "").strip():
        return revision[:64]
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha[:12]
    except OSError:
        pass
    return "unknown"


def _version() -> str:
    try:
        return importlib.metadata.version("carnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO = _made(
    Gauge,
    "carnet_build_info",
    "Always 1; the labels say which Carnet runs",
    ["version", "revision", "python"],
)
BUILD_INFO.labels(_version(), _revision(), platform.python_version()).set(1)

# -- HTTP ---------------------------------------------------------------------

HTTP_REQUESTS = _made(
    Counter, "carnet_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
# Fine around the SLO (p99 <= 50 ms): 2.5 ms steps from 5 to 15 ms, then 20, 25, 30, 40, 50.
HTTP_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
HTTP_LATENCY = _made(
    Histogram,
    "carnet_http_request_duration_seconds",
    "Time from a request's arrival to its answer",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)

# -- the log --------------------------------------------------------------------

EVENTS_APPENDED = _made(Counter, "carnet_events_appended_total", "Events appended to the log")
VERSION_CONFLICTS = _made(
    Counter, "carnet_version_conflicts_total", "Appends refused because another writer won"
)
LOG_HEAD_POSITION = _made(
    Gauge, "carnet_log_head_position", "Highest position in the log (carnet.events)"
)
LOG_HEAD_TIMESTAMP = _made(
    Gauge,
    "carnet_log_head_timestamp_seconds",
    "When the event at the log's head was recorded (Unix time)",
)

# -- projections ------------------------------------------------------------------

PROJECTION_APPLIED = _made(
    Counter,
    "carnet_projection_events_applied_total",
    "Events applied by this process's runner of a projection",
    ["projection"],
)
PROJECTION_POSITION = _made(
    Gauge, "carnet_projection_position", "Log position of a projection's checkpoint", ["projection"]
)
PROJECTION_RUNNING = _made(
    Gauge,
    "carnet_projection_running",
    "This process's runner of a projection: 1 running, 0 stopped or held",
    ["projection"],
)
PROJECTION_LAG_EVENTS = _made(
    Gauge,
    "carnet_projection_lag_events",
    "Committed events after a projection's checkpoint (exact up to 10000, then estimated "
    "from positions)",
    ["projection"],
)
PROJECTION_LAG_SECONDS = _made(
    Gauge,
    "carnet_projection_lag_seconds",
    "Age of the oldest event a projection has not applied yet; 0 when caught up",
    ["projection"],
)
PROJECTION_STOPPED = _made(
    Gauge,
    "carnet_projection_stopped",
    "1 while the checkpoint table says the projection stopped on an error (in any process)",
    ["projection"],
)

# -- the relay and NATS -------------------------------------------------------------

RELAY_PUBLISHED = _made(Counter, "carnet_relay_published_total", "Events published to JetStream")
RELAY_REFUSED = _made(
    Counter,
    "carnet_relay_refused_total",
    "Batches JetStream refused, or publishing stopped, because the stream or the lock moved",
    ["reason"],
)
RELAY_REFUSED_REASONS = ("stream-moved", "lost-lock")
RELAY_LAG_EVENTS = _made(
    Gauge,
    "carnet_relay_lag_events",
    "Committed events the relay has not published to a stream yet (exact up to 10000)",
    ["stream"],
)
RELAY_LAG_SECONDS = _made(
    Gauge,
    "carnet_relay_lag_seconds",
    "Age of the oldest event not yet published to a stream; 0 when caught up",
    ["stream"],
)
STREAM_HOLES = _made(
    Counter,
    "carnet_nats_stream_holes_total",
    "Holes a NATS-fed projection worker found in the stream (it holds before them)",
    ["projection"],
)


class OptionalGauge(Collector):
    """A gauge without labels that is absent until first set.

    For what a process may not have at all: a process that uses no NATS exports
    no `carnet_nats_connected`, rather than a 0 that would read as "disconnected".
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float | None = None

    def set(self, value: float) -> None:
        self.value = value

    def collect(self) -> Iterator[Metric]:
        if self.value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


NATS_CONNECTED = OptionalGauge(
    "carnet_nats_connected", "1 while connected to NATS, else 0 (absent: this process uses none)"
)
if not DISABLED:
    REGISTRY.register(NATS_CONNECTED)

# -- the database and the process ---------------------------------------------------

DATABASE_UP = _made(
    Gauge,
    "carnet_database_up",
    "1 if the last probe (SELECT 1) answered within the database timeout, else 0",
)
POOL_SIZE = _made(Gauge, "carnet_db_pool_size", "Open connections in the database pool")
POOL_MAX = _made(Gauge, "carnet_db_pool_max", "Most connections the database pool may open")
POOL_IN_USE = _made(Gauge, "carnet_db_pool_in_use", "Pool connections acquired right now")
POOL_WAITING = _made(
    Gauge, "carnet_db_pool_waiting", "Tasks waiting for a pool connection right now"
)
EVENT_LOOP_LAG = _made(
    Gauge,
    "carnet_event_loop_lag_seconds",
    "How late the event loop last ran a timer (its scheduling delay)",
)

# -- the access ledger ----------------------------------------------------------------

LEDGER_ENTRIES = _made(Counter, "carnet_ledger_entries_total", "Access-ledger entries made durable")
LEDGER_BATCH_ENTRIES = _made(
    Histogram,
    "carnet_ledger_batch_entries",
    "Access-ledger entries written by one group commit",
    buckets=tuple(2**i for i in range(10)),  # 1, 2, 4 … 512
)
LEDGER_WRITE_DURATION = _made(
    Histogram,
    "carnet_ledger_write_duration_seconds",
    "Time to make one access-ledger batch durable, retries included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEDGER_FAILURES = _made(
    Counter,
    "carnet_ledger_failures_total",
    "Access-ledger batches that could not be written (every waiting request refused)",
)


class LedgerVerification(Collector):
    """The last completed verification of the ledger's hash chain, by this process.

    Absent until this process has completed one (a process that does not verify
    exports nothing rather than a 0 that would read as "tampered").
    """

    def __init__(self) -> None:
        self.result: tuple[bool, float, int] | None = None  # (intact, unix time, entries)

    def record(self, intact: bool, at: float, entries: int) -> None:
        self.result = (intact, at, entries)

    def collect(self) -> Iterator[Metric]:
        if self.result is None:
            return
        intact, at, entries = self.result
        yield GaugeMetricFamily(
            "carnet_ledger_verify_ok",
            "1 if the hash chain was intact at the last verification, 0 if tampered",
            value=1 if intact else 0,
        )
        yield GaugeMetricFamily(
            "carnet_ledger_verify_timestamp_seconds",
            "When the last verification of the ledger completed (Unix time)",
            value=at,
        )
        yield GaugeMetricFamily(
            "carnet_ledger_verified_entries",
            "Ledger entries verified intact at the last verification",
            value=entries,
        )


LEDGER_VERIFICATION = LedgerVerification()
if not DISABLED:
    REGISTRY.register(LEDGER_VERIFICATION)

# -- the HTTP edge's defences -----------------------------------------------------------

THROTTLED = _made(Counter, "carnet_throttled_total", "Requests answered 429", ["reason"])
THROTTLED_REASONS = ("rate", "enumeration")
ENUMERATION_SUSPECTED = _made(
    Counter,
    "carnet_enumeration_suspected_total",
    "Bursts of not-found or denied look-ups by one token",
)
TOKEN_SUSPENSIONS = _made(
    Counter,
    "carnet_token_suspensions_total",
    "Tokens suspended by the enumeration defence",
)

# -- zero at start ----------------------------------------------------------------------


if not DISABLED:
    _zero(THROTTLED, THROTTLED_REASONS)
    _zero(RELAY_REFUSED, RELAY_REFUSED_REASONS)
    _zero(PROJECTION_APPLIED, [p.name for p in all_projections()])
    _zero(STREAM_HOLES, [p.name for p in all_projections()])


def zero_http_routes(routes: Iterable[tuple[str, str]]) -> None:
    """Create the latency histogram of every (method, route template) the app serves.

    Its `_count` is the request rate of the route, from 0 at start. The request
    counter's children are created on first use: its `status` values are not
    known in advance (write ratios with `sum()`, which is 0 then).
    """
    for method, route in routes:
        HTTP_LATENCY.labels(method, route)


# -- exposition --------------------------------------------------------------------------


def exposition(accept: str | None) -> tuple[bytes, str]:
    """This process's metrics, and their content type, in the format `accept` asks for.

    OpenMetrics for `application/openmetrics-text`, else the Prometheus text format 0.0.4.
    """
    encode, content_type = choose_encoder(accept or "")
    return encode(REGISTRY), content_type
