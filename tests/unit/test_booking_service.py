import asyncio
from datetime import UTC, date, datetime, time, timedelta
from uuid import uuid4

import pytest

from domain.agenda import AgendaDay
from domain.directory import Establishment, Patient, Practitioner
from domain.errors import Forbidden, IdempotencyKeyReused, NotFound, SlotTaken, TooLate
from domain.values import Motive, OpeningHours, Sex, Status
from services.actors import Actor, ActorKind
from services.booking import BookingService
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
