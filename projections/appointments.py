"""Statements shared by the two read models that list appointments.

Both keep one row per appointment and follow its status; they differ in what
they join to it (the patient's name for the agenda, the practitioner and
address for the patient view).
"""

from collections.abc import Mapping
from typing import Any

from projections.base import Op
from projections.common import kind

STATUS_BY_EVENT = {
    "Appointment.Cancelled": "cancelled",
    "Appointment.MarkedNoShow": "noshow",
    "Appointment.MarkedFulfilled": "fulfilled",
}


def status_ops(event: Any, t: Mapping[str, str]) -> list[Op]:
    appointments = t["appointments"]
    name = kind(event)
    if name in STATUS_BY_EVENT:
        reason = getattr(event, "reason", None)
        return [
            Op(
                f"UPDATE {appointments} SET status = $2, "
                "cancellation_reason = coalesce($3, cancellation_reason) WHERE id = $1",
                (event.originator_id, STATUS_BY_EVENT[name], reason),
            )
        ]
    if name == "Appointment.Rescheduled":
        return [
            Op(
                f"UPDATE {appointments} SET status = 'cancelled', replaced_by = $2, "
                "cancellation_reason = 'rescheduled' WHERE id = $1",
                (event.originator_id, event.replaced_by),
            )
        ]
    return []
