"""The access index: which ledger entries name which actor, address, record or patient.

Fed by the access ledger, it only finds entries; the entries themselves are
read back from the log (infra/access_index.py), which is the evidence. Two
tables:

- `entries`, one row per ledger entry (its sequence: the entry event's log
  position, unique across the ledger's shards), with who, from where, what
  and how it ended;
- `items`, the records and patients each entry names (with the entry's
  token and time again, for the record list of a token: see the DDL): one row per
  disclosure item; for an entry without items (a refusal, a write-ahead
  attempt, or an entry written before items existed) one row per record
  and per patient it lists, which is what was asked for. `disclosed` is
  true only for the rows of an allowed entry that disclosed them (its items,
  or everything an allowed entry from before items listed).

A refusal names no practitioner or establishment in its items; when its
request's selectors did (`practitioner_id` in the path of an agenda read),
its rows carry it, so that "who touched practitioner P" finds the attempts
(not for a search of the ledger itself, whose selectors are its filters).

Text a client sent (user agent, ids in a path) arrives escaped and bounded
by the edge; older entries may hold more, so every indexed text is cut to
KEY_LIMIT characters (a B-tree key has a size limit that a value must not
be able to exceed, or the projection would stop on it). The queries cut
their values the same way.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

from domain.ledger import IDENTITY_FIELDS, AccessRecord
from projections.base import Op, as_json
from projections.common import kind

KEY_LIMIT = 500
# The log (infra/schema.py): an event handed to a projection carries its shard
# and version but not its position, which the statement looks up by them.
LOG = "carnet.events"
# Selectors (path ids, query parameters) that name a controller or a practitioner.
_SELECTED = ("practitioner_id", "establishment_id")


def key(value: str | None) -> str | None:
    """An indexed text as the index stores it (and so as a query must compare it)."""
    return None if value is None else value[:KEY_LIMIT]


class Row(NamedTuple):
    record_id: str | None
    patient_id: str | None
    identified: bool
    disclosed: bool
    practitioner_id: str | None
    establishment_id: str | None
    fields: tuple[str, ...]


def rows(record: AccessRecord) -> list[Row]:
    """The item rows of one entry (see the module docstring)."""
    allowed = record.outcome == "allowed"
    items = record.disclosures()
    found = [
        Row(
            i.record_id,
            i.patient_id,
            allowed and i.identified,
            allowed,
            i.practitioner_id,
            i.establishment_id,
            i.fields,
        )
        for i in items
    ]
    # Beyond the items: with items, only named (asked for); before items, disclosed.
    listed = allowed and not record.items
    named = listed and not IDENTITY_FIELDS.isdisjoint(record.fields)
    records = {i.record_id for i in items}
    patients = {i.patient_id for i in items}
    found += [
        Row(r, None, False, listed, None, None, record.fields if listed else ())
        for r in dict.fromkeys(record.record_ids)
        if r not in records
    ]
    found += [
        Row(None, p, named, listed, None, None, record.fields if listed else ())
        for p in dict.fromkeys(record.patient_ids)
        if p not in patients
    ]
    # A ledger search's selectors are its filters, not what it touched.
    asked = record.resource_type != "access-log"
    selected = dict(s for s in record.selectors if asked and s[0] in _SELECTED)
    practitioner = None if any(r.practitioner_id for r in found) else selected.get(_SELECTED[0])
    establishment = None if any(r.establishment_id for r in found) else selected.get(_SELECTED[1])
    if practitioner or establishment:
        found = [
            r._replace(
                practitioner_id=r.practitioner_id or practitioner,
                establishment_id=r.establishment_id or establishment,
            )
            for r in found or [Row(None, None, False, False, None, None, ())]
        ]
    return found


class AccessIndexProjection:
    """Keyed by log position since the ledger has shards (schema step 7 rebuilt it)."""

    name = "access_index"
    tables: tuple[str, ...] = ("entries", "items")
    reads_ledger = True

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        entries, items = t["entries"], t["items"]
        # (who, at, sequence): one actor over a time window is one range of one index,
        # and the sequences come with it (an index-only scan once vacuumed).
        return [
            f"""CREATE TABLE {entries} (
                sequence bigint PRIMARY KEY, at timestamptz NOT NULL,
                actor_kind text NOT NULL, actor_id text NOT NULL,
                token_id text, integration_id text,
                client_ip text NOT NULL, user_agent text NOT NULL,
                action text NOT NULL, resource_type text NOT NULL, outcome text NOT NULL,
                replay boolean NOT NULL, as_of bigint NOT NULL, as_of_tx bigint NOT NULL,
                request_id text NOT NULL)""",
            f"CREATE INDEX ON {entries} (actor_id, at, sequence)",
            f"CREATE INDEX ON {entries} (token_id, at, sequence) WHERE token_id IS NOT NULL",
            f"CREATE INDEX ON {entries} (integration_id, at, sequence) "
            "WHERE integration_id IS NOT NULL",
            f"CREATE INDEX ON {entries} (client_ip, at, sequence)",
            f"CREATE INDEX ON {entries} (user_agent, at, sequence)",
            f"CREATE INDEX ON {entries} (at, sequence)",
            f"""CREATE TABLE {items} (
                sequence bigint NOT NULL, ord integer NOT NULL,
                record_id text, patient_id text,
                identified boolean NOT NULL, disclosed boolean NOT NULL,
                practitioner_id text, establishment_id text, fields text[] NOT NULL,
                token_id text, at timestamptz NOT NULL,
                PRIMARY KEY (sequence, ord))""",
            # The record list of a token over a window, from one range of one index: a
            # token's entries are spread over the whole log, its index entries are not.
            f"CREATE INDEX ON {items} (token_id, at) INCLUDE (record_id, disclosed) "
            "WHERE token_id IS NOT NULL",
            f"CREATE INDEX ON {items} (record_id, sequence) WHERE record_id IS NOT NULL",
            f"CREATE INDEX ON {items} (patient_id, sequence) WHERE patient_id IS NOT NULL",
            f"CREATE INDEX ON {items} (practitioner_id, sequence) "
            "WHERE practitioner_id IS NOT NULL",
            f"CREATE INDEX ON {items} (establishment_id, sequence) "
            "WHERE establishment_id IS NOT NULL",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        if kind(event) == "Patient.Erased":
            # Their addresses and user agents, sealed under the key the erasure
            # destroys: a rebuild reads them as "", and so does this.
            return [
                Op(
                    f"UPDATE {t['entries']} SET client_ip = '', user_agent = '' "
                    "WHERE actor_kind = 'patient' AND actor_id = $1",
                    (str(event.originator_id),),
                )
            ]
        if kind(event) != "AccessRecorded":
            return []
        r: AccessRecord = event.record
        found = rows(r)
        # One statement per entry, the same for every entry: the runner sends a
        # batch of them as one pipelined executemany.
        return [
            Op(
                f"""WITH pos AS (
                    SELECT position AS sequence FROM {LOG}
                    WHERE originator_id = $24::uuid AND originator_version = $1::int
                ), entry AS (
                    INSERT INTO {t["entries"]} SELECT
                        pos.sequence, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
                    FROM pos
                    ON CONFLICT DO NOTHING)
                INSERT INTO {t["items"]}
                SELECT pos.sequence, u.ord, u.record_id, u.patient_id, u.identified, u.disclosed,
                    u.practitioner_id, u.establishment_id,
                    ARRAY(SELECT jsonb_array_elements_text(u.fields::jsonb)), $5, $2
                FROM pos, unnest($16::int[], $17::text[], $18::text[], $19::boolean[],
                    $20::boolean[], $21::text[], $22::text[], $23::text[])
                    AS u(ord, record_id, patient_id, identified, disclosed,
                        practitioner_id, establishment_id, fields)
                ON CONFLICT DO NOTHING""",
                (
                    event.originator_version,
                    r.at,
                    r.actor_kind,
                    key(r.actor_id),
                    key(r.token_id),
                    key(r.integration_id),
                    key(r.client_ip),
                    key(r.user_agent),
                    r.action,
                    r.resource_type,
                    r.outcome,
                    r.replay,
                    r.as_of,
                    r.as_of_tx,
                    r.request_id,
                    list(range(len(found))),
                    [key(x.record_id) for x in found],
                    [key(x.patient_id) for x in found],
                    [x.identified for x in found],
                    [x.disclosed for x in found],
                    [key(x.practitioner_id) for x in found],
                    [key(x.establishment_id) for x in found],
                    [as_json(list(x.fields)) for x in found],
                    event.originator_id,
                ),
            )
        ]
