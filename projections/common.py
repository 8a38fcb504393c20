"""Statements shared by read models that keep their own copy of the directory.

Each read model owns every table it reads, so that it can be rebuilt alone;
the directory part is the same shape everywhere, written once here.
"""

from collections.abc import Mapping
from typing import Any

from projections.base import Op, as_json, per_tables

# The kinds `directory_ops` changes tables for.
DIRECTORY_KINDS = frozenset(
    {
        "Establishment.Registered",
        "Practitioner.Registered",
        "Practitioner.MotiveAdded",
        "Practitioner.OpeningHoursSet",
        "Practitioner.AbsenceAdded",
    }
)


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


@per_tables
def _sql(t: Mapping[str, str]) -> dict[str, str]:
    establishments, practitioners = t["establishments"], t["practitioners"]
    return {
        "establishment": f"""INSERT INTO {establishments}
                    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                        $5::text[])""",
        "practitioner": f"""INSERT INTO {practitioners}
                        (id, name, specialty, establishment_id, city, timezone, policy)
                    SELECT u.id, u.name, u.specialty, u.establishment_id,
                        (SELECT city FROM {establishments} WHERE id = u.establishment_id),
                        u.timezone, u.policy
                    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                        $6::jsonb[])
                        AS u(id, name, specialty, establishment_id, timezone, policy)""",
        "motive": f"""UPDATE {practitioners} p SET motives = (
                        SELECT coalesce(jsonb_agg(m), '[]'::jsonb)
                        FROM jsonb_array_elements(p.motives) m WHERE m->>'id' <> u.motive_id
                    ) || jsonb_build_array(u.motive)
                    FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS u(id, motive_id, motive)
                    WHERE p.id = u.id""",
        "hours": f"""UPDATE {practitioners} p SET hours = u.hours
                    FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, hours) WHERE p.id = u.id""",
        "absence": f"""UPDATE {practitioners} p
                    SET absences = p.absences || jsonb_build_array(u.absence)
                    FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, absence) WHERE p.id = u.id""",
    }


def directory_ops(event: Any, t: Mapping[str, str]) -> list[Op]:
    """Set-based (see `Op`): each statement takes its arguments as arrays, one row each."""
    sql = _sql(t)
    match kind(event):
        case "Establishment.Registered":
            return [
                Op(
                    sql["establishment"],
                    (event.originator_id, event.name, event.address, event.city, event.timezone),
                    key=("establishments", event.originator_id),
                )
            ]
        case "Practitioner.Registered":
            return [
                Op(
                    sql["practitioner"],
                    (
                        event.originator_id,
                        event.name,
                        event.specialty,
                        event.establishment_id,
                        event.timezone,
                        as_json(event.policy),
                    ),
                    key=("practitioners", event.originator_id),
                    reads=(("establishments", event.establishment_id),),
                )
            ]
        case "Practitioner.MotiveAdded":
            # A motive added again under the same id replaces the first.
            return [
                Op(
                    sql["motive"],
                    (event.originator_id, event.motive.id, as_json(event.motive)),
                    key=("practitioners", event.originator_id),
                )
            ]
        case "Practitioner.OpeningHoursSet":
            return [
                Op(
                    sql["hours"],
                    (event.originator_id, as_json(event.hours)),
                    key=("practitioners", event.originator_id),
                )
            ]
        case "Practitioner.AbsenceAdded":
            return [
                Op(
                    sql["absence"],
                    (event.originator_id, as_json(event.absence)),
                    key=("practitioners", event.originator_id),
                )
            ]
    return []
