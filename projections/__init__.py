"""Read models: one module per read model, each a pure projection of the log."""

from projections.access_index import AccessIndexProjection
from projections.access_log import AccessLogProjection
from projections.agenda import AgendaProjection
from projections.availability import AvailabilityProjection
from projections.base import Op, Projection, Tables
from projections.directory import DirectoryProjection
from projections.patient_view import PatientViewProjection

READ_SCHEMA = "carnet_read"


def all_projections() -> list[Projection]:
    return [
        DirectoryProjection(),
        AvailabilityProjection(),
        AgendaProjection(),
        PatientViewProjection(),
        AccessLogProjection(),
        AccessIndexProjection(),
    ]


__all__ = ["READ_SCHEMA", "Op", "Projection", "Tables", "all_projections"]
