"""Practitioner agenda: per practitioner and local day, each appointment with
its status, motive and the patient's display name."""

from collections.abc import Mapping
from typing import Any

from domain.directory import ERASED_NAME
from projections.appointments import STATUS_KINDS, status_ops
from projections.base import Op, per_tables
from projections.common import kind


@per_tables
def _sql(t: Mapping[str, str]) -> dict[str, str]:
    return {
        "patient": f"INSERT INTO {t['patients']} SELECT * FROM unnest($1::uuid[], $2::text[])",
        "erased_patient": f"UPDATE {t['patients']} SET display_name = $2 WHERE id = $1",
        "erased_name": f"UPDATE {t['appointments']} SET patient_name = $2 WHERE patient_id = $1",
        "practitioner": f"""INSERT INTO {t["practitioners"]}
                        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])""",
        "motive": f"""INSERT INTO {t["motives"]}
                        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])
                        ON CONFLICT (practitioner_id, motive_id)
                        DO UPDATE SET name = excluded.name""",
        "booked": f"""INSERT INTO {t["appointments"]}
                        SELECT u.id, u.practitioner_id, u.establishment_id,
                            (u.start_at AT TIME ZONE p.timezone)::date, u.start_at, u.end_at,
                            u.motive_id,
                            (SELECT name FROM {t["motives"]} m
                             WHERE m.practitioner_id = u.practitioner_id
                               AND m.motive_id = u.motive_id),
                            u.patient_id,
                            (SELECT display_name FROM {t["patients"]} WHERE id = u.patient_id),
                            'booked', u.source, u.replaces, NULL, NULL
                        FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[],
                            $5::timestamptz[], $6::text[], $7::uuid[], $8::text[], $9::uuid[])
                            AS u(id, practitioner_id, establishment_id, start_at, end_at,
                                motive_id, patient_id, source, replaces)
                        JOIN {t["practitioners"]} p ON p.id = u.practitioner_id""",
    }


class AgendaProjection:
    name = "agenda"
    tables: tuple[str, ...] = ("patients", "practitioners", "motives", "appointments")

    handles = (
        frozenset(
            {
                "Patient.Registered",
                "Practitioner.Registered",
                "Practitioner.MotiveAdded",
                "Appointment.Booked",
            }
        )
        | STATUS_KINDS
    )

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
        """Set-based (see `Op`): each statement takes its arguments as arrays, one row each."""
        sql = _sql(t)
        match kind(event):
            case "Patient.Registered":
                name = (
                    ERASED_NAME
                    if event.first_name is None or event.last_name is None
                    else f"{event.first_name} {event.last_name}"
                )
                return [
                    Op(
                        sql["patient"],
                        (event.originator_id, name),
                        key=("patients", event.originator_id),
                    )
                ]
            case "Patient.Erased":
                return [
                    Op(sql["erased_patient"], (event.originator_id, ERASED_NAME)),
                    Op(sql["erased_name"], (event.originator_id, ERASED_NAME)),
                    *status_ops(event, t),
                ]
            case "Practitioner.Registered":
                return [
                    Op(
                        sql["practitioner"],
                        (event.originator_id, event.establishment_id, event.timezone),
                        key=("practitioners", event.originator_id),
                    )
                ]
            case "Practitioner.MotiveAdded":
                return [
                    Op(
                        sql["motive"],
                        (event.originator_id, event.motive.id, event.motive.name),
                        key=("motives", (event.originator_id, event.motive.id)),
                    )
                ]
            case "Appointment.Booked":
                return [
                    Op(
                        sql["booked"],
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
                        key=("appointments", event.originator_id),
                        reads=(
                            ("practitioners", event.practitioner_id),
                            ("motives", (event.practitioner_id, event.motive_id)),
                            ("patients", event.patient_id),
                        ),
                    )
                ]
        return status_ops(event, t)
