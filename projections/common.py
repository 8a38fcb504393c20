"""Statements shared by read models that keep their own copy of the directory.

Each read model owns every table it reads, so that it can be rebuilt alone;
the directory part is the same shape everywhere, written once here.
"""

from collections.abc import Mapping
from typing import Any

from projections.base import Op, as_json


def kind(event: Any) -> str:
    """'Appointment.Booked', 'Practitioner.MotiveAdded', …"""
    return type(event).__qualname__


def directory_ddl(t: Mapping[str, str]) -> list[str]:
    return [
        f"""CREATE TABLE {t["establishments"]} (
            id uuid PRIMARY KEY, name text NOT NULL, address text NOT NULL,
            city text NOT NULL, timezone text NOT NULL)""",
        f"""CREATE TABLE {t["practitioners"]} (
            id uuid PRIMARY KEY, name text NOT NULL, specialty text NOT NULL,
            establishment_id uuid NOT NULL, city text, timezone text NOT NULL,
            motives jsonb NOT NULL DEFAULT '[]', hours jsonb NOT NULL DEFAULT '[]',
            absences jsonb NOT NULL DEFAULT '[]', policy jsonb NOT NULL)""",
    ]


def directory_ops(event: Any, t: Mapping[str, str]) -> list[Op]:
    establishments, practitioners = t["establishments"], t["practitioners"]
    match kind(event):
        case "Establishment.Registered":
            return [
                Op(
                    f"INSERT INTO {establishments} VALUES ($1, $2, $3, $4, $5)",
                    (event.originator_id, event.name, event.address, event.city, event.timezone),
                )
            ]
        case "Practitioner.Registered":
            return [
                Op(
                    f"""INSERT INTO {practitioners}
                        (id, name, specialty, establishment_id, city, timezone, policy)
                    SELECT $1, $2, $3, $4, (SELECT city FROM {establishments} WHERE id = $4),
                           $5, $6::jsonb""",
                    (
                        event.originator_id,
                        event.name,
                        event.specialty,
                        event.establishment_id,
                        event.timezone,
                        as_json(event.policy),
                    ),
                )
            ]
        case "Practitioner.MotiveAdded":
            # A motive added again under the same id replaces the first.
            return [
                Op(
                    f"""UPDATE {practitioners} SET motives = (
                        SELECT coalesce(jsonb_agg(m), '[]'::jsonb)
                        FROM jsonb_array_elements(motives) m WHERE m->>'id' <> $2
                    ) || jsonb_build_array($3::jsonb) WHERE id = $1""",
                    (event.originator_id, event.motive.id, as_json(event.motive)),
                )
            ]
        case "Practitioner.OpeningHoursSet":
            return [
                Op(
                    f"UPDATE {practitioners} SET hours = $2::jsonb WHERE id = $1",
                    (event.originator_id, as_json(event.hours)),
                )
            ]
        case "Practitioner.AbsenceAdded":
            return [
                Op(
                    f"UPDATE {practitioners} SET absences = absences || jsonb_build_array"
                    "($2::jsonb) WHERE id = $1",
                    (event.originator_id, as_json(event.absence)),
                )
            ]
    return []
