"""The patient's access log: who saw or changed their data, when, and what.

Fed by the access ledger. Actors are named as a person would know them (the
practitioner, the establishment's desk, the software's name), from the
tokens' own events; token ids never reach this table. An entry's sequence is
its event's log position (unique across the ledger's shards).
"""

from collections.abc import Mapping
from typing import Any

from projections.access_index import LOG
from projections.base import Op
from projections.common import kind

LABELS = {
    "patient": "You",
    "admin": "Carnet administration",
    "analyst": "Carnet data-protection team",
    "operator": "Carnet operations",
}


class AccessLogProjection:
    name = "access_log"
    tables: tuple[str, ...] = ("actors", "entries")
    reads_ledger = True

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            f"""CREATE TABLE {t["actors"]} (
                token_id uuid PRIMARY KEY, label text NOT NULL)""",
            f"""CREATE TABLE {t["entries"]} (
                sequence bigint NOT NULL, patient_id uuid NOT NULL, at timestamptz NOT NULL,
                actor text NOT NULL, action text NOT NULL, resource_type text NOT NULL,
                outcome text NOT NULL, fields text[] NOT NULL,
                identified boolean NOT NULL DEFAULT true,
                PRIMARY KEY (patient_id, sequence))""",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        match kind(event):
            case "Token.Issued":
                label = LABELS.get(event.actor_kind, event.display_name)
                return [
                    Op(
                        f"INSERT INTO {t['actors']} VALUES ($1, $2) "
                        "ON CONFLICT (token_id) DO NOTHING",
                        (event.originator_id, label),
                    )
                ]
            case "AccessRecorded":
                record = event.record
                if not record.patient_ids:
                    return []
                fallback = LABELS.get(record.actor_kind, record.actor_kind)
                # Whose identity reached the actor: a masked line concerns its
                # patient without naming them; a refusal disclosed nothing. An
                # allowed entry from before items existed counts as naming them.
                items = record.items
                identified = [
                    record.outcome == "allowed"
                    and (not items or any(i.identified for i in items if i.patient_id == p))
                    for p in record.patient_ids
                ]
                # A replayed booking created nothing: it sent the appointment again.
                action = "read" if record.replay else record.action
                return [
                    Op(
                        f"""INSERT INTO {t["entries"]}
                        SELECT pos.position, p::uuid, $3,
                            CASE WHEN $10 = 'patient' THEN
                                CASE WHEN p = $11 THEN 'You' ELSE 'Another patient account' END
                            ELSE coalesce(
                                (SELECT label FROM {t["actors"]} WHERE token_id = $4::uuid), $5)
                            END,
                            $6, $7, $8, $9, named
                        FROM (SELECT position FROM {LOG}
                            WHERE originator_id = $13::uuid AND originator_version = $1::int) pos,
                            unnest($2::text[], $12::boolean[]) AS u(p, named)
                        ON CONFLICT DO NOTHING""",
                        (
                            event.originator_version,
                            list(record.patient_ids),
                            record.at,
                            record.token_id,
                            fallback,
                            action,
                            record.resource_type,
                            record.outcome,
                            list(record.fields),
                            record.actor_kind,
                            record.actor_id,
                            identified,
                            event.originator_id,
                        ),
                    )
                ]
        return []
