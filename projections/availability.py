"""Availability: what free slots are computed from, per practitioner.

The table holds each practitioner's hours, absences and motives (its own copy
of the directory) and every reserved interval. Free slots depend on the time
of the question (minimum notice, horizon), so they are computed at read time
by the pure `domain.calendar.free_slots`, from these rows only.
"""

from collections.abc import Mapping
from typing import Any

from projections.base import Op
from projections.common import directory_ddl, directory_ops, kind


class AvailabilityProjection:
    name = "availability"
    tables: tuple[str, ...] = ("establishments", "practitioners", "days", "bookings")

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
        match kind(event):
            case "AgendaDay.Opened":
                return [
                    Op(
                        f"INSERT INTO {t['days']} VALUES ($1, $2, $3)",
                        (event.originator_id, event.practitioner_id, event.day),
                    )
                ]
            case "AgendaDay.SlotReserved":
                return [
                    Op(
                        f"""INSERT INTO {t["bookings"]}
                        SELECT $2, practitioner_id, day, $3, $4 FROM {t["days"]} WHERE id = $1""",
                        (event.originator_id, event.appointment_id, event.start, event.end),
                    )
                ]
            case "AgendaDay.SlotReleased":
                return [
                    Op(
                        f"DELETE FROM {t['bookings']} WHERE appointment_id = $1",
                        (event.appointment_id,),
                    )
                ]
        return directory_ops(event, t)
