"""Practitioner agenda: per practitioner and local day, each appointment with
its status, motive and the patient's display name."""

from collections.abc import Mapping
from typing import Any

from projections.appointments import status_ops
from projections.base import Op
from projections.common import kind


class AgendaProjection:
    name = "agenda"
    tables: tuple[str, ...] = ("patients", "practitioners", "motives", "appointments")

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            f"CREATE TABLE {t['patients']} (id uuid PRIMARY KEY, display_name text NOT NULL)",
            f"""CREATE TABLE {t["practitioners"]} (
                id uuid PRIMARY KEY, establishment_id uuid NOT NULL, timezone text NOT NULL)""",
            f"""CREATE TABLE {t["motives"]} (
                practitioner_id uuid, motive_id text, name text NOT NULL,
                PRIMARY KEY (practitioner_id, motive_id))""",
            f"""CREATE TABLE {t["appointments"]} (
                id uuid PRIMARY KEY, practitioner_id uuid NOT NULL,
                establishment_id uuid NOT NULL, day date NOT NULL,
                start_at timestamptz NOT NULL, end_at timestamptz NOT NULL,
                motive_id text NOT NULL, motive_name text, patient_id uuid NOT NULL,
                patient_name text, status text NOT NULL, source text NOT NULL,
                replaces uuid, replaced_by uuid, cancellation_reason text)""",
            f"CREATE INDEX ON {t['appointments']} (practitioner_id, day)",
            f"CREATE INDEX ON {t['appointments']} (establishment_id, day)",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        match kind(event):
            case "Patient.Registered":
                return [
                    Op(
                        f"INSERT INTO {t['patients']} VALUES ($1, $2)",
                        (event.originator_id, f"{event.first_name} {event.last_name}"),
                    )
                ]
            case "Practitioner.Registered":
                return [
                    Op(
                        f"INSERT INTO {t['practitioners']} VALUES ($1, $2, $3)",
                        (event.originator_id, event.establishment_id, event.timezone),
                    )
                ]
            case "Practitioner.MotiveAdded":
                return [
                    Op(
                        f"""INSERT INTO {t["motives"]} VALUES ($1, $2, $3)
                        ON CONFLICT (practitioner_id, motive_id) DO UPDATE SET name = $3""",
                        (event.originator_id, event.motive.id, event.motive.name),
                    )
                ]
            case "Appointment.Booked":
                return [
                    Op(
                        f"""INSERT INTO {t["appointments"]}
                        SELECT $1, $2, $3, ($4 AT TIME ZONE p.timezone)::date, $4, $5, $6,
                            (SELECT name FROM {t["motives"]}
                             WHERE practitioner_id = $2 AND motive_id = $6),
                            $7, (SELECT display_name FROM {t["patients"]} WHERE id = $7),
                            'booked', $8, $9, NULL, NULL
                        FROM {t["practitioners"]} p WHERE p.id = $2""",
                        (
                            event.originator_id,
                            event.practitioner_id,
                            event.establishment_id,
                            event.start,
                            event.end,
                            event.motive_id,
                            event.patient_id,
                            event.source.value,
                            event.replaces,
                        ),
                    )
                ]
        return status_ops(event, t)
