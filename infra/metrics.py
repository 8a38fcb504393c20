"""Prometheus metrics. One registry per process, defined once here."""

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "carnet_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "carnet_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_APPENDED = Counter("carnet_events_appended_total", "Events appended to the log")
VERSION_CONFLICTS = Counter(
    "carnet_version_conflicts_total", "Appends refused because another writer won"
)
PROJECTION_APPLIED = Counter(
    "carnet_projection_events_applied_total", "Events applied by a projection", ["projection"]
)
PROJECTION_POSITION = Gauge(
    "carnet_projection_position", "Log position of a projection's checkpoint", ["projection"]
)
PROJECTION_RUNNING = Gauge(
    "carnet_projection_running",
    "1 while a projection runs, 0 once it has stopped on an error",
    ["projection"],
)
RELAY_PUBLISHED = Counter("carnet_relay_published_total", "Events published to JetStream")
RELAY_REFUSED = Counter(
    "carnet_relay_refused_total",
    "Batches JetStream refused, or publishing stopped, because the stream or the lock moved",
    ["reason"],
)
STREAM_HOLES = Counter(
    "carnet_nats_stream_holes_total",
    "Holes a NATS-fed projection worker found in the stream (it holds before them)",
    ["projection"],
)
LEDGER_ENTRIES = Counter("carnet_ledger_entries_total", "Access-ledger entries made durable")
LEDGER_BATCH_SIZE = Histogram(
    "carnet_ledger_batch_size",
    "Access-ledger entries written by one group commit",
    buckets=tuple(2**i for i in range(10)),  # 1, 2, 4 … 512
)
LEDGER_WRITE_SECONDS = Histogram(
    "carnet_ledger_write_seconds",
    "Time to make one access-ledger batch durable, retries included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEDGER_FAILURES = Counter(
    "carnet_ledger_failures_total",
    "Access-ledger batches that could not be written (every waiting request refused)",
)
THROTTLED = Counter("carnet_throttled_total", "Requests answered 429", ["reason"])
ENUMERATION_SUSPECTED = Counter(
    "carnet_enumeration_suspected_total", "Bursts of not-found or denied look-ups by one token"
)
