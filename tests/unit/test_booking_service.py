import asyncio
from datetime import UTC, date, datetime, time, timedelta
from uuid import uuid4

import pytest

from domain.agenda import AgendaDay
from domain.credentials import Grant
from domain.directory import CareRelationship, Establishment, Patient, Practitioner
from domain.errors import Forbidden, IdempotencyKeyReused, NotFound, SlotTaken, TooLate
from domain.values import Motive, OpeningHours, Sex, Status
from services.actors import Actor, ActorKind
from services.booking import BookingService
from services.directory import DirectoryService
from services.ports import Metadata
from tests.conftest import FakeClock
from tests.unit.fakes import FakeRepository

META = Metadata(actor_kind="test", actor_id="t")
NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
NINE = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)  # Wednesday 09:00 Paris


@pytest.fixture
async def setup():
    repo = FakeRepository()
    e = Establishment.register("Cabinet", "1 rue A", "Paris")
    p = Practitioner.register("Dr A", "GP", e)
    p.add_motive(Motive("consultation", "Consultation", 20))
    p.set_opening_hours(tuple(OpeningHours(d, time(9), time(12)) for d in range(5)))
    patients = [
        Patient.register(n, "X", date(1990, 1, 1), Sex.OTHER, f"{n}@example.org", "+33 6 1")
        for n in ("ann", "ben")
    ]
    await repo.save([e, p, *patients], META)
    clock = FakeClock(NOW)
    service = BookingService(repo, clock)
    ann = Actor(ActorKind.PATIENT, patients[0].id)
    ben = Actor(ActorKind.PATIENT, patients[1].id)
    doctor = Actor(ActorKind.PRACTITIONER, p.id)
    return service, repo, clock, p, ann, ben, doctor


async def test_booking_then_reading_it_back(setup):
    service, _, _, p, ann, _, _ = setup
    booked = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE
    )
    got = await service.get_appointment(ann, booked.appointment.id)
    assert (got.start, got.end, got.status) == (NINE, NINE + timedelta(minutes=20), Status.BOOKED)


async def test_concurrent_bookings_of_one_slot_leave_exactly_one(setup):
    service, _, _, p, ann, ben, _ = setup

    async def try_book(who: Actor) -> str:
        try:
            await service.book(
                who, META, practitioner_id=p.id, motive_id="consultation", start=NINE
            )
        except SlotTaken:
            return "taken"
        return "booked"

    results = await asyncio.gather(*(try_book(ann if i % 2 else ben) for i in range(10)))
    assert sorted(results) == ["booked"] + ["taken"] * 9


async def test_an_idempotent_repeat_books_nothing_more(setup):
    service, repo, _, p, ann, _, _ = setup
    first = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE, idempotency_key="k1"
    )
    saves = len(repo.saves)
    again = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE, idempotency_key="k1"
    )
    assert again.appointment.id == first.appointment.id and again.replayed
    assert len(repo.saves) == saves
    with pytest.raises(IdempotencyKeyReused):
        await service.book(
            ann,
            META,
            practitioner_id=p.id,
            motive_id="consultation",
            start=NINE + timedelta(minutes=20),
            idempotency_key="k1",
        )


async def test_someone_elses_appointment_looks_exactly_like_a_missing_one(setup):
    service, _, _, p, ann, ben, _ = setup
    booked = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE
    )
    with pytest.raises(NotFound) as foreign:
        await service.get_appointment(ben, booked.appointment.id)
    with pytest.raises(NotFound) as missing:
        await service.get_appointment(ben, uuid4())
    assert (foreign.value.detail, foreign.value.field) == (
        missing.value.detail,
        missing.value.field,
    )
    with pytest.raises(NotFound):
        await service.cancel(ben, META, booked.appointment.id, "")


async def test_a_patient_cannot_book_for_another_patient(setup):
    service, _, _, p, ann, ben, _ = setup
    with pytest.raises(NotFound):
        await service.book(
            ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE, patient_id=ben.id
        )


async def test_patients_are_held_to_the_cancellation_window_but_practitioners_are_not(setup):
    service, _, clock, p, ann, _, doctor = setup
    booked = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE
    )
    clock.advance(hours=22)  # 07:00 Paris, two hours before
    with pytest.raises(TooLate):
        await service.cancel(ann, META, booked.appointment.id, "late")
    changed = await service.cancel(doctor, META, booked.appointment.id, "doctor ill")
    assert changed.appointment.status is Status.CANCELLED


async def test_rescheduling_leaves_exactly_one_booked_appointment(setup):
    service, repo, _, p, ann, _, _ = setup
    old = await service.book(ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE)
    new = await service.reschedule(ann, META, old.appointment.id, NINE + timedelta(days=1))
    day_old = await repo.get(AgendaDay, AgendaDay.create_id(p.id, date(2026, 12, 2)))
    day_new = await repo.get(AgendaDay, AgendaDay.create_id(p.id, date(2026, 12, 3)))
    assert day_old is not None and day_old.bookings == {}
    assert day_new is not None and list(day_new.bookings) == [new.appointment.id]
    assert (
        await service.get_appointment(ann, old.appointment.id)
    ).replaced_by == new.appointment.id


async def test_patients_cannot_mark_their_own_appointment_as_fulfilled(setup):
    service, _, clock, p, ann, _, doctor = setup
    booked = await service.book(
        ann, META, practitioner_id=p.id, motive_id="consultation", start=NINE
    )
    clock.advance(days=1, hours=1, minutes=5)
    with pytest.raises(Forbidden):
        await service.mark(ann, META, booked.appointment.id, "fulfilled")
    changed = await service.mark(doctor, META, booked.appointment.id, "noshow")
    assert changed.appointment.status is Status.NOSHOW


# -- book-to-reveal: the practice books only patients it already knows --------


async def practice_member(repo: FakeRepository, p: Practitioner, kind: str) -> Actor:
    """Someone who may book on p's agenda: p, the desk, or software granted on p."""
    if kind == "practitioner":
        return Actor(ActorKind.PRACTITIONER, p.id)
    if kind == "staff":
        return Actor(ActorKind.STAFF, uuid4(), p.establishment_id)
    software = Actor(ActorKind.INTEGRATION, uuid4())
    grant = Grant(practitioner_id=p.id, integration_id=software.id, scopes=("appointments:write",))
    await repo.save([grant], META)
    return software


PRACTICE = ["practitioner", "staff", "integration"]


@pytest.mark.parametrize("kind", PRACTICE)
async def test_the_practice_booking_a_stranger_is_told_what_it_is_told_for_nobody(setup, kind):
    service, repo, _, p, _, ben, _ = setup
    who = await practice_member(repo, p, kind)
    saves = len(repo.saves)
    with pytest.raises(NotFound) as stranger:
        await service.book(
            who, META, practitioner_id=p.id, motive_id="consultation", start=NINE, patient_id=ben.id
        )
    with pytest.raises(NotFound) as nobody:
        await service.book(
            who,
            META,
            practitioner_id=p.id,
            motive_id="consultation",
            start=NINE,
            patient_id=uuid4(),
        )
    assert (stranger.value.detail, stranger.value.field) == (
        nobody.value.detail,
        nobody.value.field,
    )
    assert stranger.value.field == "patient_id"
    assert len(repo.saves) == saves  # nothing appended


@pytest.mark.parametrize("kind", PRACTICE)
async def test_a_patient_who_booked_here_before_may_then_be_booked_by_the_practice(setup, kind):
    service, repo, _, p, _, ben, _ = setup
    who = await practice_member(repo, p, kind)
    later = NINE + timedelta(minutes=20)
    with pytest.raises(NotFound):
        await service.book(
            who,
            META,
            practitioner_id=p.id,
            motive_id="consultation",
            start=later,
            patient_id=ben.id,
        )
    # Ben books for himself, knowing no one there: that needs no relationship.
    own = await service.book(ben, META, practitioner_id=p.id, motive_id="consultation", start=NINE)
    await service.cancel(ben, META, own.appointment.id, "changed my mind")  # any status counts
    booked = await service.book(
        who, META, practitioner_id=p.id, motive_id="consultation", start=later, patient_id=ben.id
    )
    assert booked.appointment.patient_id == ben.id


async def test_a_patient_registered_at_the_desk_may_be_booked_there_and_nowhere_else(setup):
    service, repo, clock, p, _, _, doctor = setup
    desk = Actor(ActorKind.STAFF, uuid4(), p.establishment_id)
    carl = await DirectoryService(repo, clock).register_patient(
        desk,
        META,
        first_name="Carl",
        last_name="Walk-In",
        birth_date=date(1975, 3, 3),
        sex=Sex.MALE,
        email="carl@example.org",
        phone="+33 6 44 44 44 44",
    )
    registered = await repo.get(Patient, carl.id)
    assert registered is not None and registered.registered_by_establishment == p.establishment_id
    booked = await service.book(
        doctor, META, practitioner_id=p.id, motive_id="consultation", start=NINE, patient_id=carl.id
    )
    assert booked.appointment.patient_id == carl.id
    elsewhere = Establishment.register("Other", "2 rue B", "Lyon")
    p2 = Practitioner.register("Dr B", "GP", elsewhere)
    p2.add_motive(Motive("consultation", "Consultation", 20))
    p2.set_opening_hours(p.hours)
    await repo.save([elsewhere, p2], META)
    with pytest.raises(NotFound):
        await service.book(
            Actor(ActorKind.PRACTITIONER, p2.id),
            META,
            practitioner_id=p2.id,
            motive_id="consultation",
            start=NINE,
            patient_id=carl.id,
        )


async def test_a_patient_may_consent_to_be_booked_by_an_establishment(setup):
    service, _, _, p, ann, ben, doctor = setup
    with pytest.raises(NotFound):  # only Ben himself consents for Ben
        await service.consent_to_bookings(
            ann, META, patient_id=ben.id, establishment_id=p.establishment_id
        )
    given = await service.consent_to_bookings(
        ben, META, patient_id=ben.id, establishment_id=p.establishment_id
    )
    assert given.position > 0
    again = await service.consent_to_bookings(
        ben, META, patient_id=ben.id, establishment_id=p.establishment_id
    )
    assert again.position == 0  # already known there: nothing more to record
    booked = await service.book(
        doctor, META, practitioner_id=p.id, motive_id="consultation", start=NINE, patient_id=ben.id
    )
    assert booked.appointment.patient_id == ben.id


async def test_two_first_bookings_of_one_patient_at_one_place_both_succeed(setup):
    service, repo, _, p, ann, _, _ = setup
    both = await asyncio.gather(
        *(
            service.book(ann, META, practitioner_id=p.id, motive_id="consultation", start=at)
            for at in (NINE, NINE + timedelta(minutes=20))
        )
    )
    assert len({b.appointment.id for b in both}) == 2
    known = await repo.get(CareRelationship, CareRelationship.create_id(p.establishment_id, ann.id))
    assert known is not None and known.version == 1  # recorded once, by the winner
