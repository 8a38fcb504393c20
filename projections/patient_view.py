"""Patient view: a patient's appointments, with practitioner, address and status."""

from collections.abc import Mapping
from typing import Any

from projections.appointments import status_ops
from projections.base import Op
from projections.common import kind


class PatientViewProjection:
    name = "patient_view"
    tables: tuple[str, ...] = ("establishments", "practitioners", "appointments")

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
        match kind(event):
            case "Establishment.Registered":
                return [
                    Op(
                        f"INSERT INTO {t['establishments']} VALUES ($1, $2, $3, $4)",
                        (event.originator_id, event.name, event.address, event.city),
                    )
                ]
            case "Practitioner.Registered":
                return [
                    Op(
                        f"INSERT INTO {t['practitioners']} VALUES ($1, $2, $3, $4)",
                        (event.originator_id, event.name, event.specialty, event.establishment_id),
                    )
                ]
            case "Appointment.Booked":
                return [
                    Op(
                        f"""INSERT INTO {t["appointments"]}
                        SELECT $1, $2, $3, p.name, p.specialty, $4, e.name, e.address, e.city,
                            $5, $6, $7, 'booked', $8, NULL, NULL
                        FROM (SELECT 1) one
                        LEFT JOIN {t["practitioners"]} p ON p.id = $3
                        LEFT JOIN {t["establishments"]} e ON e.id = $4""",
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
                    )
                ]
        return status_ops(event, t)
