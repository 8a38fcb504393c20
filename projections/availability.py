"""Availability: what free slots are computed from, per practitioner.

The table holds each practitioner's hours, absences and motives (its own copy
of the directory) and every reserved interval. Free slots depend on the time
of the question (minimum notice, horizon), so they are computed at read time
by the pure `domain.calendar.free_slots`, from these rows only.
"""

from collections.abc import Mapping
from typing import Any

from projections.base import Op, per_tables
from projections.common import DIRECTORY_KINDS, directory_ddl, directory_ops, kind


@per_tables
def _sql(t: Mapping[str, str]) -> dict[str, str]:
    return {
        "opened": f"""INSERT INTO {t["days"]}
                        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::date[])""",
        "reserved": f"""INSERT INTO {t["bookings"]}
                        SELECT u.appointment_id, d.practitioner_id, d.day, u.start_at, u.end_at
                        FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[])
                            AS u(day_id, appointment_id, start_at, end_at)
                        JOIN {t["days"]} d ON d.id = u.day_id""",
        "released": f"DELETE FROM {t['bookings']} WHERE appointment_id = ANY($1::uuid[])",
    }


class AvailabilityProjection:
    name = "availability"
    tables: tuple[str, ...] = ("establishments", "practitioners", "days", "bookings")

    handles = (
        frozenset({"AgendaDay.Opened", "AgendaDay.SlotReserved", "AgendaDay.SlotReleased"})
        | DIRECTORY_KINDS
    )

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            *directory_ddl(t),
            f"CREATE INDEX ON {t['practitioners']} (specialty, city)",
            f"""CREATE TABLE {t["days"]} (
                id uuid PRIMARY KEY, practitioner_id uuid NOT NULL, day date NOT NULL)""",
            f"""CREATE TABLE {t["bookings"]} (
                appointment_id uuid PRIMARY KEY, practitioner_id uuid NOT NULL,
                day date NOT NULL, start_at timestamptz NOT NULL,
                end_at timestamptz NOT NULL)""",
            f"CREATE INDEX ON {t['bookings']} (practitioner_id, day)",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        """Set-based (see `Op`): each statement takes its arguments as arrays, one row each."""
        sql = _sql(t)
        match kind(event):
            case "AgendaDay.Opened":
                return [
                    Op(
                        sql["opened"],
                        (event.originator_id, event.practitioner_id, event.day),
                        key=("days", event.originator_id),
                    )
                ]
            case "AgendaDay.SlotReserved":
                return [
                    Op(
                        sql["reserved"],
                        (event.originator_id, event.appointment_id, event.start, event.end),
                        key=("bookings", event.appointment_id),
                        reads=(("days", event.originator_id),),
                    )
                ]
            case "AgendaDay.SlotReleased":
                return [
                    Op(
                        sql["released"],
                        (event.appointment_id,),
                        key=("bookings", event.appointment_id),
                    )
                ]
        return directory_ops(event, t)
