"""Events stored by every past release still decode, project and load.

tests/fixtures/events-vN.jsonl hold one stored event of each event type, in the
shapes of one release (v1: main at commit 9fe9e84, before issue 7; v2: issue 7,
with care relationships and the patient's registering establishment; v3: issue 8,
access entries with disclosure items, selectors, replay and as_of_tx; v4: issue 10,
the ledger's anchors; v5: issue 11, erasure, in plaintext as a log written
before crypto-shredding holds them), exactly as
the mapper wrote them: one JSON object a line, with the stored state as text.
They are never rewritten: a log in production holds them for ever. Every run
decodes each of them into today's classes (where a field added since then must
come back with its default, or an upcaster must rewrite it, see infra/codec.py),
projects them into every read model and loads every aggregate from them.

When an event type is added or a shape changes, extend `todays_events` below and
write the next file, keeping the older ones:

    .venv/bin/python -m tests.integration.test_schema_evolution tests/fixtures/events-v5.jsonl
"""

import importlib
import pkgutil
import sys
import typing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest
from eventsourcing.domain import Aggregate, CanInitAggregate, DomainEvent
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

import domain
from domain.agenda import AgendaDay, Appointment, cancel, cancel_on_erasure, reschedule
from domain.credentials import Grant, Token
from domain.directory import Basis, CareRelationship, Establishment, Patient, Practitioner
from domain.ledger import (
    ANCHOR_ID,
    GENESIS,
    LEDGER_ID,
    AccessRecord,
    AccessRecorded,
    Disclosure,
    LedgerAnchored,
    ShardHead,
    anchor_hash,
    chain_hash,
)
from domain.values import Absence, BookingPolicy, Motive, Sex, Source
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.projection_status import statuses
from infra.projector import Projector
from infra.repository import PostgresRepository
from projections import all_projections
from tests.integration.test_projections import dump
from tests.workload import FIRST_SLOT, consultation
from tests.world import HOURS, META

FIXTURES = sorted(Path(__file__).parent.parent.joinpath("fixtures").glob("events-v*.jsonl"))


def todays_events() -> list[Any]:
    """One event of each type of domain/, as today's code makes them, in a small
    coherent world (the practitioner's establishment exists, and so on)."""
    est = Establishment.register("Cabinet A", "1 rue A", "Paris", "Europe/Paris")
    prac = Practitioner.register("Dr One", "General practice", est, BookingPolicy())
    prac.add_motive(Motive("consultation", "Consultation", 20))
    prac.set_opening_hours(HOURS)
    prac.add_absence(Absence(FIRST_SLOT + timedelta(days=7), FIRST_SLOT + timedelta(days=8)))
    patient = Patient.register(
        "Alice",
        "Test",
        date(1980, 1, 1),
        Sex.FEMALE,
        "alice@example.org",
        "+33 6 00 00 00 00",
        registered_by_establishment=est.id,
    )
    known = CareRelationship.start(est.id, patient.id, Basis.BOOKED)
    patient.change_contact_details("alice@example.net", "+33 6 11 11 11 11")
    day = AgendaDay(practitioner_id=prac.id, day=FIRST_SLOT.date())
    next_day = AgendaDay(practitioner_id=prac.id, day=FIRST_SLOT.date() + timedelta(days=1))

    def booked(hours: float) -> Appointment:
        return consultation(day, patient.id, est.id, FIRST_SLOT + timedelta(hours=hours))

    cancelled, moved, missed, seen = booked(0), booked(1), booked(2), booked(5)
    cancel(cancelled, day, "changed plans", Source.PATIENT)
    start = FIRST_SLOT + timedelta(days=1)
    moved_to = reschedule(
        moved,
        day,
        next_day,
        duration_minutes=20,
        start=start,
        end=start + timedelta(minutes=20),
        by=Source.STAFF,
    )
    # Issue 11: a patient erased, their appointment to come cancelled with it.
    gone = Patient.register(
        "Bob", "Gone", date(1970, 2, 2), Sex.MALE, "bob@example.org", "+33 6 22 22 22 22"
    )
    theirs = consultation(day, gone.id, est.id, FIRST_SLOT + timedelta(hours=8))
    cancel_on_erasure(theirs, day, Source.PATIENT)
    gone.erase()
    missed.mark_noshow(FIRST_SLOT + timedelta(hours=3))
    seen.mark_fulfilled(FIRST_SLOT + timedelta(hours=6))
    token = Token(
        token_hash="0" * 64,
        actor_kind="integration",
        actor_id=uuid4(),
        establishment_id=None,
        display_name="Practice software",
        expires_at=FIRST_SLOT + timedelta(days=365),
    )
    token.suspend("too many misses")
    token.flag_enumeration(misses=30, window_seconds=60.0)
    token.lift_suspension()
    token.revoke("rotated")
    grant = Grant(practitioner_id=prac.id, integration_id=token.actor_id, scopes=("agenda:read",))
    grant.change(("agenda:read", "appointments:write"))
    grant.revoke()
    record = AccessRecord(
        actor_kind="integration",
        actor_id=str(token.actor_id),
        token_id=str(token.id),
        action="read",
        resource_type="Appointment",
        record_ids=(str(seen.id),),
        patient_ids=(str(patient.id),),
        fields=("id", "start"),
        items=(
            Disclosure(
                record_id=str(seen.id),
                patient_id=str(patient.id),
                identified=False,
                practitioner_id=str(prac.id),
                establishment_id=str(est.id),
                fields=("id", "start"),
            ),
        ),
        selectors=(("appointment_id", str(seen.id)),),
        replay=True,
        at=FIRST_SLOT,
        as_of=1,
        as_of_tx=1,
    )
    entry = AccessRecorded(
        originator_id=LEDGER_ID,
        originator_version=1,
        timestamp=datetime.now(UTC),
        record=record,
        prev_hash=GENESIS,
        hash=chain_hash(GENESIS, record),
    )
    heads = (ShardHead(0, 1, entry.hash),)
    anchor = LedgerAnchored(
        originator_id=ANCHOR_ID,
        originator_version=1,
        timestamp=datetime.now(UTC),
        heads=heads,
        prev_hash=GENESIS,
        hash=anchor_hash(GENESIS, heads),
    )
    aggregates = [est, prac, patient, known, day, next_day, cancelled, moved, moved_to, missed]
    aggregates += [seen, gone, theirs]
    return [e for a in [*aggregates, token, grant] for e in a.collect_events()] + [entry, anchor]


def write_fixture(path: Path) -> None:
    mapper = TypedMapper()
    with path.open("w") as out:
        for event in todays_events():
            s = mapper.to_stored_event(event)
            line = {
                "originator_id": str(s.originator_id),
                "originator_version": s.originator_version,
                "topic": s.topic,
                "state": s.state.decode(),
            }
            out.write(msgspec.json.encode(line).decode() + "\n")


def stored_events(path: Path) -> list[StoredEvent]:
    lines = [msgspec.json.decode(line) for line in path.read_text().splitlines() if line]
    return [
        StoredEvent(
            UUID(x["originator_id"]), x["originator_version"], x["topic"], x["state"].encode()
        )
        for x in lines
    ]


def domain_event_topics() -> set[str]:
    """Every event class that domain/ declares: aggregates' events and plain ones."""
    topics = set()
    for info in pkgutil.iter_modules(domain.__path__):
        module = importlib.import_module(f"domain.{info.name}")
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            if issubclass(cls, Aggregate):
                events = [
                    v
                    for k, v in vars(cls).items()
                    if isinstance(v, type) and issubclass(v, DomainEvent) and k != "Event"
                ]
                if sum(issubclass(e, CanInitAggregate) for e in events) > 1:
                    events = [e for e in events if e.__name__ != "Created"]  # the library's
                topics |= {get_topic(e) for e in events}
            elif issubclass(cls, DomainEvent):
                topics.add(get_topic(cls))
    return topics


def test_there_is_a_fixture_log_and_every_event_type_of_domain_has_an_example_in_one():
    assert FIXTURES, "tests/fixtures/events-v*.jsonl are missing"
    kept = {s.topic for path in FIXTURES for s in stored_events(path)}
    missing = domain_event_topics() - kept
    assert not missing, (
        f"no stored example of {sorted(missing)}: add them to todays_events() and write "
        "the next tests/fixtures/events-vN.jsonl (see this module's docstring)"
    )


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_stored_event_of_a_past_release_decodes_into_today_s_class_whole(path: Path):
    mapper = TypedMapper()
    for stored in stored_events(path):
        event = mapper.to_domain_event(stored)
        assert get_topic(type(event)) == stored.topic
        hints = typing.get_type_hints(type(event))
        declared = {n for n, h in hints.items() if typing.get_origin(h) is not typing.ClassVar}
        absent = declared - vars(event).keys() - {"originator_id_type"}
        assert not absent, f"{stored.topic} decodes without {absent}"
        again = mapper.to_domain_event(mapper.to_stored_event(event))
        assert vars(again) == vars(event)
        if isinstance(event, AccessRecorded):
            # An entry written by a past release still verifies under today's hash.
            assert chain_hash(event.prev_hash, event.record) == event.hash
            assert event.record.disclosures(), "an old entry still tells what it disclosed"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
async def test_a_past_release_s_log_projects_into_every_read_model_and_loads_every_aggregate(
    pool: asyncpg.Pool, path: Path
):
    events = stored_events(path)
    store = EventStore(pool)
    await store.append(events, META)
    projectors = [Projector(pool, p) for p in all_projections()]
    for projector in projectors:
        await projector.catch_up()
        assert any((await dump(pool, projector)).values()), f"{projector.name} is empty"
    found = {s.name: (s.state, s.lag_events, s.error) for s in await statuses(pool)}
    assert found == {p.name: ("running", 0, None) for p in projectors}
    statuses_seen = await pool.fetch("SELECT DISTINCT status FROM carnet_read.agenda_appointments")
    assert {r[0] for r in statuses_seen} == {"booked", "cancelled", "noshow", "fulfilled"}
    repository = PostgresRepository(store)
    versions: dict[UUID, int] = {}
    for s in events:
        assert isinstance(s.originator_id, UUID)
        versions[s.originator_id] = max(versions.get(s.originator_id, 0), s.originator_version)
    # The ledger and its anchors are chains of plain events, not aggregates.
    versions.pop(LEDGER_ID)
    versions.pop(ANCHOR_ID, None)  # from v4 on
    for originator_id, version in versions.items():
        loaded = await repository.get(Aggregate, originator_id)
        assert loaded is not None and loaded.version == version


if __name__ == "__main__":
    write_fixture(Path(sys.argv[1]))
