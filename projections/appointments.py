"""Statements shared by the two read models that list appointments.

Both keep one row per appointment and follow its status; they differ in what
they join to it (the patient's name for the agenda, the practitioner and
address for the patient view).
"""

from collections.abc import Mapping
from typing import Any

from domain.agenda import ERASURE_REASON
from projections.base import Op, per_tables
from projections.common import kind

STATUS_BY_EVENT = {
    "Appointment.Cancelled": "cancelled",
    "Appointment.CancelledOnErasure": "cancelled",
    "Appointment.MarkedNoShow": "noshow",
    "Appointment.MarkedFulfilled": "fulfilled",
}
# The kinds `status_ops` changes tables for.
STATUS_KINDS = frozenset({*STATUS_BY_EVENT, "Appointment.Rescheduled", "Patient.Erased"})


@per_tables
def _sql(t: Mapping[str, str]) -> dict[str, str]:
    appointments = t["appointments"]
    return {
        "status": f"""UPDATE {appointments} a SET status = u.status,
                    cancellation_reason = coalesce(u.reason, a.cancellation_reason)
                FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, status, reason)
                WHERE a.id = u.id""",
        "rescheduled": f"""UPDATE {appointments} a
                SET status = 'cancelled', replaced_by = u.replaced_by,
                    cancellation_reason = 'rescheduled'
                FROM unnest($1::uuid[], $2::uuid[]) AS u(id, replaced_by) WHERE a.id = u.id""",
        # What a person typed when cancelling is theirs: gone with their key
        # (a rebuild reads it as None, and keeps the column NULL). The reasons
        # the log itself gives (rescheduled, erasure) stay.
        "erased": f"""UPDATE {appointments} SET cancellation_reason = NULL
                WHERE patient_id = $1 AND replaced_by IS NULL
                  AND cancellation_reason IS DISTINCT FROM '{ERASURE_REASON}'""",
    }


def status_ops(event: Any, t: Mapping[str, str]) -> list[Op]:
    """Set-based (see `Op`): each statement takes its arguments as arrays, one row each."""
    name = kind(event)
    if name in STATUS_BY_EVENT:
        sql = _sql(t)
        reason = (
            ERASURE_REASON
            if name == "Appointment.CancelledOnErasure"
            else getattr(event, "reason", None)
        )
        return [
            Op(
                sql["status"],
                (event.originator_id, STATUS_BY_EVENT[name], reason),
                key=("appointments", event.originator_id),
            )
        ]
    if name == "Patient.Erased":
        return [Op(_sql(t)["erased"], (event.originator_id,))]
    if name == "Appointment.Rescheduled":
        sql = _sql(t)
        return [
            Op(
                sql["rescheduled"],
                (event.originator_id, event.replaced_by),
                key=("appointments", event.originator_id),
            )
        ]
    return []
