"""The artifacts of a breach scope (scope.json, notification lists, the Art. 33 draft),
and the scoping use case wired to PostgreSQL."""

from infra.report.files import encode, write_artifacts
from infra.report.wiring import IndexedLedger, disclosed_by, reflected, scoping_service

__all__ = [
    "IndexedLedger",
    "disclosed_by",
    "encode",
    "reflected",
    "scoping_service",
    "write_artifacts",
]
