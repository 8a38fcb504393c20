"""Agenda days (the double-booking boundary) and appointments.

A booking touches two aggregates: the Appointment (who, what, status) and
the AgendaDay of its practitioner and local date (only the time it holds).
Both are saved in one atomic append; two overlapping bookings of one day race
on the AgendaDay's version, so exactly one of them can win.
"""

from datetime import date, datetime
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from domain.calendar import local_day
from domain.errors import InvalidTransition, SlotTaken, WrongDuration
from domain.values import Booking, Interval, Source, Status


class AgendaDay(Aggregate):
    @event("Opened")
    def __init__(self, practitioner_id: UUID, day: date) -> None:
        self.practitioner_id = practitioner_id
        self.day = day
        self.bookings: dict[UUID, Booking] = {}

    @staticmethod
    def create_id(practitioner_id: UUID, day: date) -> UUID:
        return uuid5(NAMESPACE_URL, f"/agenda/{practitioner_id}/{day.isoformat()}")

    def taken(self) -> list[Interval]:
        return [b.interval for b in self.bookings.values()]

    def require_free(self, wanted: Interval, ignoring: UUID | None = None) -> None:
        if any(
            wanted.overlaps(b.interval)
            for b in self.bookings.values()
            if b.appointment_id != ignoring
        ):
            raise SlotTaken("that time is already booked", field="start")

    def reserve(self, appointment_id: UUID, start: datetime, end: datetime) -> None:
        self.require_free(Interval(start, end))
        self._slot_reserved(appointment_id, start, end)

    @event("SlotReserved")
    def _slot_reserved(self, appointment_id: UUID, start: datetime, end: datetime) -> None:
        self.bookings[appointment_id] = Booking(appointment_id, start, end)

    def release(self, appointment_id: UUID) -> None:
        if appointment_id in self.bookings:
            self._slot_released(appointment_id)

    @event("SlotReleased")
    def _slot_released(self, appointment_id: UUID) -> None:
        del self.bookings[appointment_id]


# The cancellation reason of an appointment cancelled by its patient's erasure.
ERASURE_REASON = "patient data erased"


class Appointment(Aggregate):
    @event("Booked")
    def __init__(
        self,
        patient_id: UUID,
        practitioner_id: UUID,
        establishment_id: UUID,
        motive_id: str,
        start: datetime,
        end: datetime,
        source: Source,
        replaces: UUID | None = None,
    ) -> None:
        self.patient_id = patient_id
        self.practitioner_id = practitioner_id
        self.establishment_id = establishment_id
        self.motive_id = motive_id
        self.start = start
        self.end = end
        self.source = source
        self.replaces = replaces
        self.replaced_by: UUID | None = None
        self.status = Status.BOOKED
        self.cancellation_reason: str | None = None

    @staticmethod
    def create_id(*_: object, **__: object) -> UUID:
        # Random, never sequential: enumerating ids must find nothing.
        return uuid4()

    def _require_booked(self) -> None:
        if self.status is not Status.BOOKED:
            raise InvalidTransition(f"the appointment is {self.status.value}", field="status")

    def cancel(self, reason: str, by: Source) -> None:
        self._require_booked()
        self._cancelled(reason=reason.strip()[:500], by=by)

    @event("Cancelled")
    def _cancelled(self, reason: str, by: Source) -> None:
        self.status = Status.CANCELLED
        self.cancellation_reason = reason

    def cancel_on_erasure(self, by: Source) -> None:
        """Cancelled because its patient's data is erased (GDPR Art. 17): the
        reason is this fact, not a text anyone typed."""
        self._require_booked()
        self._cancelled_on_erasure(by=by)

    @event("CancelledOnErasure")
    def _cancelled_on_erasure(self, by: Source) -> None:
        self.status = Status.CANCELLED
        self.cancellation_reason = ERASURE_REASON

    @event("Rescheduled")
    def _rescheduled(self, replaced_by: UUID, by: Source) -> None:
        self.status = Status.CANCELLED
        self.cancellation_reason = "rescheduled"
        self.replaced_by = replaced_by

    def mark_noshow(self, now: datetime) -> None:
        self._require_started(now)
        self._marked_noshow()

    @event("MarkedNoShow")
    def _marked_noshow(self) -> None:
        self.status = Status.NOSHOW

    def mark_fulfilled(self, now: datetime) -> None:
        self._require_started(now)
        self._marked_fulfilled()

    @event("MarkedFulfilled")
    def _marked_fulfilled(self) -> None:
        self.status = Status.FULFILLED

    def _require_started(self, now: datetime) -> None:
        self._require_booked()
        if now < self.start:
            raise InvalidTransition("the appointment has not started yet", field="status")


def agenda_day_id(practitioner_id: UUID, start: datetime, tz: str) -> UUID:
    return AgendaDay.create_id(practitioner_id, local_day(start, tz))


def book(
    day: AgendaDay,
    *,
    patient_id: UUID,
    establishment_id: UUID,
    motive_id: str,
    duration_minutes: int,
    start: datetime,
    end: datetime,
    source: Source,
    replaces: UUID | None = None,
) -> Appointment:
    """Reserve the time on the day and create the appointment; the caller saves both."""
    if (end - start).total_seconds() != duration_minutes * 60:
        raise WrongDuration(f"this motive lasts {duration_minutes} minutes", field="end")
    appointment = Appointment(
        patient_id=patient_id,
        practitioner_id=day.practitioner_id,
        establishment_id=establishment_id,
        motive_id=motive_id,
        start=start,
        end=end,
        source=source,
        replaces=replaces,
    )
    day.reserve(appointment.id, start, end)
    return appointment


def cancel_on_erasure(appointment: Appointment, day: AgendaDay, by: Source) -> None:
    appointment.cancel_on_erasure(by)
    day.release(appointment.id)


def cancel(appointment: Appointment, day: AgendaDay, reason: str, by: Source) -> None:
    appointment.cancel(reason, by)
    day.release(appointment.id)


def reschedule(
    old: Appointment,
    old_day: AgendaDay,
    new_day: AgendaDay,
    *,
    duration_minutes: int,
    start: datetime,
    end: datetime,
    by: Source,
) -> Appointment:
    """Release the old time and secure the new one, in one set of pending events.

    When both times fall on the same day, old_day and new_day are the same
    object, so the release happens first and the new time may overlap the old.
    """
    old._require_booked()
    # Check everything before changing anything: a refusal leaves both
    # aggregates exactly as they were, even in memory.
    if (end - start).total_seconds() != duration_minutes * 60:
        raise WrongDuration(f"this motive lasts {duration_minutes} minutes", field="end")
    new_day.require_free(Interval(start, end), ignoring=old.id if new_day is old_day else None)
    old_day.release(old.id)
    new = book(
        new_day,
        patient_id=old.patient_id,
        establishment_id=old.establishment_id,
        motive_id=old.motive_id,
        duration_minutes=duration_minutes,
        start=start,
        end=end,
        source=by,
        replaces=old.id,
    )
    old._rescheduled(replaced_by=new.id, by=by)
    return new
