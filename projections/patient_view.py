"""Patient view: a patient's appointments, with practitioner, address and status."""

from collections.abc import Mapping
from typing import Any

from projections.appointments import STATUS_KINDS, status_ops
from projections.base import Op, per_tables
from projections.common import kind


@per_tables
def _sql(t: Mapping[str, str]) -> dict[str, str]:
    return {
        "establishment": f"""INSERT INTO {t["establishments"]}
                        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])""",
        "practitioner": f"""INSERT INTO {t["practitioners"]}
                        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[])""",
        "booked": f"""INSERT INTO {t["appointments"]}
                        SELECT u.id, u.patient_id, u.practitioner_id, p.name, p.specialty,
                            u.establishment_id, e.name, e.address, e.city,
                            u.motive_id, u.start_at, u.end_at, 'booked', u.replaces, NULL, NULL
                        FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                            $6::timestamptz[], $7::timestamptz[], $8::uuid[])
                            AS u(id, patient_id, practitioner_id, establishment_id, motive_id,
                                start_at, end_at, replaces)
                        LEFT JOIN {t["practitioners"]} p ON p.id = u.practitioner_id
                        LEFT JOIN {t["establishments"]} e ON e.id = u.establishment_id""",
    }


class PatientViewProjection:
    name = "patient_view"
    tables: tuple[str, ...] = ("establishments", "practitioners", "appointments")

    handles = (
        frozenset({"Establishment.Registered", "Practitioner.Registered", "Appointment.Booked"})
        | STATUS_KINDS
    )

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            f"""CREATE TABLE {t["establishments"]} (
                id uuid PRIMARY KEY, name text NOT NULL, address text NOT NULL,
                city text NOT NULL)""",
            f"""CREATE TABLE {t["practitioners"]} (
                id uuid PRIMARY KEY, name text NOT NULL, specialty text NOT NULL,
                establishment_id uuid NOT NULL)""",
            f"""CREATE TABLE {t["appointments"]} (
                id uuid PRIMARY KEY, patient_id uuid NOT NULL, practitioner_id uuid NOT NULL,
                practitioner_name text, specialty text, establishment_id uuid NOT NULL,
                establishment_name text, address text, city text, motive_id text NOT NULL,
                start_at timestamptz NOT NULL, end_at timestamptz NOT NULL,
                status text NOT NULL, replaces uuid, replaced_by uuid,
                cancellation_reason text)""",
            f"CREATE INDEX ON {t['appointments']} (patient_id, start_at)",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        """Set-based (see `Op`): each statement takes its arguments as arrays, one row each."""
        sql = _sql(t)
        match kind(event):
            case "Establishment.Registered":
                return [
                    Op(
                        sql["establishment"],
                        (event.originator_id, event.name, event.address, event.city),
                        key=("establishments", event.originator_id),
                    )
                ]
            case "Practitioner.Registered":
                return [
                    Op(
                        sql["practitioner"],
                        (event.originator_id, event.name, event.specialty, event.establishment_id),
                        key=("practitioners", event.originator_id),
                    )
                ]
            case "Appointment.Booked":
                return [
                    Op(
                        sql["booked"],
                        (
                            event.originator_id,
                            event.patient_id,
                            event.practitioner_id,
                            event.establishment_id,
                            event.motive_id,
                            event.start,
                            event.end,
                            event.replaces,
                        ),
                        key=("appointments", event.originator_id),
                        reads=(
                            ("practitioners", event.practitioner_id),
                            ("establishments", event.establishment_id),
                        ),
                    )
                ]
        return status_ops(event, t)
