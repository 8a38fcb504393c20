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
