from datetime import UTC, date, datetime, time, timedelta
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import agenda
from domain.agenda import AgendaDay, Appointment
from domain.directory import Establishment, Patient, Practitioner
from domain.errors import (
    BeyondHorizon,
    DuringAbsence,
    InvalidTransition,
    InvalidValue,
    NotBookableOnline,
    OutsideOpeningHours,
    SlotTaken,
    TooLate,
    WrongDuration,
)
from domain.values import Absence, Interval, Motive, OpeningHours, Sex, Source, Status

NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # Tuesday 08:00 in Paris
NINE = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)  # Wednesday 09:00 in Paris


def practitioner() -> Practitioner:
    establishment = Establishment.register("Cabinet", "1 rue A", "Paris")
    p = Practitioner.register("Dr A", "General Practice", establishment)
    p.add_motive(Motive("consultation", "Consultation", 20))
    p.add_motive(Motive("desk", "Desk only", 20, online=False))
    p.set_opening_hours(tuple(OpeningHours(d, time(9), time(12)) for d in range(5)))
    return p


def slot(start: datetime, minutes: int = 20) -> Interval:
    return Interval(start, start + timedelta(minutes=minutes))


def test_a_booking_inside_opening_hours_is_accepted():
    p = practitioner()
    p.check_bookable(p.motive("consultation"), slot(NINE), NOW, Source.PATIENT)


@pytest.mark.parametrize(
    ("start", "error"),
    [
        (NINE - timedelta(minutes=10), OutsideOpeningHours),  # 08:50 Paris
        (NINE + timedelta(hours=2, minutes=50), OutsideOpeningHours),  # ends 12:10
        (datetime(2026, 12, 5, 8, tzinfo=UTC), OutsideOpeningHours),  # Saturday
        (NOW + timedelta(minutes=30), TooLate),  # under one hour's notice
        (NINE + timedelta(days=91), BeyondHorizon),
    ],
)
def test_bookings_outside_the_rules_are_refused(start, error):
    p = practitioner()
    with pytest.raises(error) as refused:
        p.check_bookable(p.motive("consultation"), slot(start), NOW, Source.PATIENT)
    assert refused.value.field == "start"


def test_a_booking_during_an_absence_is_refused():
    p = practitioner()
    p.add_absence(Absence(NINE, NINE + timedelta(hours=1), "training"))
    with pytest.raises(DuringAbsence):
        p.check_bookable(p.motive("consultation"), slot(NINE), NOW, Source.PATIENT)


def test_patients_cannot_book_desk_only_motives_but_staff_can():
    p = practitioner()
    with pytest.raises(NotBookableOnline):
        p.check_bookable(p.motive("desk"), slot(NINE), NOW, Source.PATIENT)
    p.check_bookable(p.motive("desk"), slot(NINE), NOW, Source.STAFF)


def test_patients_cannot_cancel_inside_the_cancellation_window():
    p = practitioner()
    with pytest.raises(TooLate):
        p.check_patient_may_cancel(NOW + timedelta(hours=3), NOW)
    p.check_patient_may_cancel(NOW + timedelta(hours=5), NOW)


def test_the_length_of_a_booking_is_the_motives_duration():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    with pytest.raises(WrongDuration):
        agenda.book(
            day,
            patient_id=uuid4(),
            establishment_id=uuid4(),
            motive_id="consultation",
            duration_minutes=20,
            start=NINE,
            end=NINE + timedelta(minutes=30),
            source=Source.PATIENT,
        )


def book(day: AgendaDay, start: datetime, minutes: int = 20) -> Appointment:
    return agenda.book(
        day,
        patient_id=uuid4(),
        establishment_id=uuid4(),
        motive_id="m",
        duration_minutes=minutes,
        start=start,
        end=start + timedelta(minutes=minutes),
        source=Source.PATIENT,
    )


def test_second_booking_of_a_taken_slot_is_refused():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    book(day, NINE)
    with pytest.raises(SlotTaken):
        book(day, NINE + timedelta(minutes=10))
    book(day, NINE + timedelta(minutes=20))  # back to back is fine


def test_cancelling_frees_the_time_and_cannot_happen_twice():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    first = book(day, NINE)
    agenda.cancel(first, day, "flu", Source.PATIENT)
    assert first.status is Status.CANCELLED and first.cancellation_reason == "flu"
    book(day, NINE)
    with pytest.raises(InvalidTransition):
        agenda.cancel(first, day, "again", Source.PATIENT)


def test_rescheduling_within_a_day_may_overlap_the_old_time():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    old = book(day, NINE)
    new = agenda.reschedule(
        old,
        day,
        day,
        duration_minutes=20,
        start=NINE + timedelta(minutes=10),
        end=NINE + timedelta(minutes=30),
        by=Source.PATIENT,
    )
    assert old.status is Status.CANCELLED and old.replaced_by == new.id
    assert new.replaces == old.id and list(day.bookings) == [new.id]


def test_a_refused_reschedule_changes_nothing():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    old = book(day, NINE)
    book(day, NINE + timedelta(minutes=40))
    with pytest.raises(SlotTaken):
        agenda.reschedule(
            old,
            day,
            day,
            duration_minutes=20,
            start=NINE + timedelta(minutes=40),
            end=NINE + timedelta(minutes=60),
            by=Source.PATIENT,
        )
    assert old.status is Status.BOOKED and old.id in day.bookings and len(day.bookings) == 2


def test_noshow_and_fulfilled_only_once_the_appointment_has_started():
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    a = book(day, NINE)
    with pytest.raises(InvalidTransition):
        a.mark_noshow(NOW)
    a.mark_noshow(NINE + timedelta(minutes=5))
    assert a.status is Status.NOSHOW
    with pytest.raises(InvalidTransition):
        a.mark_fulfilled(NINE + timedelta(minutes=5))


def test_agenda_day_ids_are_deterministic_per_practitioner_and_date():
    pid = uuid4()
    assert AgendaDay.create_id(pid, date(2026, 12, 2)) == AgendaDay.create_id(
        pid, date(2026, 12, 2)
    )
    assert AgendaDay.create_id(pid, date(2026, 12, 2)) != AgendaDay.create_id(
        pid, date(2026, 12, 3)
    )


def test_patient_contact_details_are_validated_and_changes_are_events():
    p = Patient.register("Ada", "L", date(1990, 1, 1), Sex.FEMALE, "ada@example.org", "+33 6 1")
    p.collect_events()
    p.change_contact_details("ADA@example.org ", "+33 6 1")
    assert p.collect_events() == []  # same details after normalisation: no event
    p.change_contact_details("ada@new.example.org", "+33 7 00 00 00 00")
    assert [type(e).__name__ for e in p.collect_events()] == ["ContactDetailsChanged"]
    with pytest.raises(InvalidValue) as e:
        p.change_contact_details("not-an-email", "+33 6 1")
    assert e.value.field == "email"


# -- the property: whatever the sequence, booked appointments never overlap ----

starts = st.integers(min_value=0, max_value=35).map(lambda i: NINE + timedelta(minutes=5 * i))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("book"), starts, st.sampled_from([15, 20, 40])),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=50), st.just(0)),
        st.tuples(st.just("reschedule"), st.integers(min_value=0, max_value=50), starts),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_no_sequence_of_book_cancel_reschedule_produces_overlapping_bookings(ops):
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    appointments: list[Appointment] = []
    for op, a, b in ops:
        try:
            if op == "book":
                appointments.append(book(day, a, b))
            elif appointments and op == "cancel":
                agenda.cancel(appointments[a % len(appointments)], day, "", Source.PATIENT)
            elif appointments and op == "reschedule":
                old = appointments[a % len(appointments)]
                minutes = int((old.end - old.start).total_seconds() // 60)
                appointments.append(
                    agenda.reschedule(
                        old,
                        day,
                        day,
                        duration_minutes=minutes,
                        start=b,
                        end=b + timedelta(minutes=minutes),
                        by=Source.PATIENT,
                    )
                )
        except (SlotTaken, InvalidTransition):
            pass  # a refusal must leave the day and the appointments untouched
    booked = [x for x in appointments if x.status is Status.BOOKED and x.id in day.bookings]
    for i, x in enumerate(booked):
        for y in booked[i + 1 :]:
            assert not Interval(x.start, x.end).overlaps(Interval(y.start, y.end))
    assert set(day.bookings) == {x.id for x in appointments if x.status is Status.BOOKED}
