"""Establishments, practitioners and patients.

Patient identity and contact details appear only in Patient events (DESIGN
decision 8): every other event refers to a patient by id, so that erasing a
patient later means shredding one key.
"""

import enum
import re
from datetime import UTC, date, datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.calendar import local_day, opening_intervals, require_aware
from domain.errors import (
    BeyondHorizon,
    DataErased,
    DuringAbsence,
    InvalidValue,
    NotBookableOnline,
    NotFound,
    OutsideOpeningHours,
    TooLate,
)
from domain.values import Absence, BookingPolicy, Interval, Motive, OpeningHours, Sex, Source

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 .\-()]{6,20}$")


def _require_text(value: str, field: str, max_len: int = 200) -> str:
    value = value.strip()
    if not value or len(value) > max_len:
        raise InvalidValue(f"must be 1 to {max_len} characters", field=field)
    return value


def validate_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(f"unknown time zone {tz!r}", field="timezone") from None
    return tz


class Establishment(Aggregate):
    @event("Registered")
    def __init__(self, name: str, address: str, city: str, timezone: str) -> None:
        self.name = name
        self.address = address
        self.city = city
        self.timezone = timezone

    @classmethod
    def register(
        cls, name: str, address: str, city: str, timezone: str = "Europe/Paris"
    ) -> "Establishment":
        return cls(
            name=_require_text(name, "name"),
            address=_require_text(address, "address"),
            city=_require_text(city, "city"),
            timezone=validate_timezone(timezone),
        )


class Practitioner(Aggregate):
    @event("Registered")
    def __init__(
        self,
        name: str,
        specialty: str,
        establishment_id: UUID,
        timezone: str,
        policy: BookingPolicy,
    ) -> None:
        self.name = name
        self.specialty = specialty
        self.establishment_id = establishment_id
        self.timezone = timezone
        self.policy = policy
        self.motives: dict[str, Motive] = {}
        self.hours: tuple[OpeningHours, ...] = ()
        self.absences: list[Absence] = []

    @classmethod
    def register(
        cls,
        name: str,
        specialty: str,
        establishment: Establishment,
        policy: BookingPolicy | None = None,
    ) -> "Practitioner":
        return cls(
            name=_require_text(name, "name"),
            specialty=_require_text(specialty, "specialty").lower(),
            establishment_id=establishment.id,
            timezone=establishment.timezone,
            policy=policy or BookingPolicy(),
        )

    def add_motive(self, motive: Motive) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,63}", motive.id):
            raise InvalidValue("lowercase letters, digits and dashes", field="id")
        _require_text(motive.name, "name")
        if not 5 <= motive.duration_minutes <= 480:
            raise InvalidValue("between 5 and 480 minutes", field="duration_minutes")
        self._motive_added(motive)

    @event("MotiveAdded")
    def _motive_added(self, motive: Motive) -> None:
        self.motives[motive.id] = motive

    def set_opening_hours(self, hours: tuple[OpeningHours, ...]) -> None:
        for i, h in enumerate(hours):
            if not 0 <= h.weekday <= 6:
                raise InvalidValue("0 (Monday) to 6 (Sunday)", field=f"hours[{i}].weekday")
            if h.end <= h.start:
                raise InvalidValue("end must be after start", field=f"hours[{i}].end")
        self._opening_hours_set(tuple(hours))

    @event("OpeningHoursSet")
    def _opening_hours_set(self, hours: tuple[OpeningHours, ...]) -> None:
        self.hours = hours

    def add_absence(self, absence: Absence) -> None:
        start = require_aware(absence.start, "start")
        end = require_aware(absence.end, "end")
        if end <= start:
            raise InvalidValue("end must be after start", field="end")
        self._absence_added(Absence(start, end, absence.reason))

    @event("AbsenceAdded")
    def _absence_added(self, absence: Absence) -> None:
        self.absences.append(absence)

    # -- rules -------------------------------------------------------------

    def motive(self, motive_id: str) -> Motive:
        try:
            return self.motives[motive_id]
        except KeyError:
            raise NotFound("no such motive for this practitioner", field="motive_id") from None

    def opening_on(self, day: date) -> list[Interval]:
        return opening_intervals(self.hours, day, self.timezone)

    def check_bookable(self, motive: Motive, slot: Interval, now: datetime, source: Source) -> None:
        """The rules a new booking must satisfy, except non-overlap (AgendaDay's)."""
        if source is Source.PATIENT and not motive.online:
            raise NotBookableOnline("this motive cannot be booked online", field="motive_id")
        if slot.start < now + timedelta(minutes=self.policy.min_notice_minutes):
            raise TooLate(
                f"bookings need {self.policy.min_notice_minutes} minutes notice", field="start"
            )
        if slot.start > now + timedelta(days=self.policy.horizon_days):
            raise BeyondHorizon(
                f"bookings open {self.policy.horizon_days} days ahead", field="start"
            )
        day = local_day(slot.start, self.timezone)
        if not any(slot.within(w) for w in self.opening_on(day)):
            raise OutsideOpeningHours("outside the practitioner's opening hours", field="start")
        if any(slot.overlaps(Interval(a.start, a.end)) for a in self.absences):
            raise DuringAbsence("the practitioner is absent then", field="start")

    def check_patient_may_cancel(self, start: datetime, now: datetime) -> None:
        window = timedelta(minutes=self.policy.cancellation_window_minutes)
        if start - now < window:
            raise TooLate(
                "too close to the appointment to cancel online; call the practice",
                field="appointment_id",
            )


class Patient(Aggregate):
    @event("Registered")
    def __init__(
        self,
        first_name: str,
        last_name: str,
        birth_date: date,
        sex: Sex,
        email: str,
        phone: str,
        registered_by_establishment: UUID | None = None,
    ) -> None:
        self.first_name: str | None = first_name
        self.last_name: str | None = last_name
        self.birth_date: date | None = birth_date
        self.sex: Sex | None = sex
        self.email: str | None = email
        self.phone: str | None = phone
        # The establishment whose desk registered the patient (None: the
        # platform did); that practice knows the patient and may book for them.
        self.registered_by_establishment = registered_by_establishment
        self.erased = False

    @classmethod
    def register(
        cls,
        first_name: str,
        last_name: str,
        birth_date: date,
        sex: Sex,
        email: str,
        phone: str,
        today: date | None = None,
        registered_by_establishment: UUID | None = None,
    ) -> "Patient":
        today = today or datetime.now(UTC).date()
        if not date(1900, 1, 1) <= birth_date <= today:
            raise InvalidValue("must be between 1900-01-01 and today", field="birth_date")
        email, phone = _check_contact(email, phone)
        return cls(
            first_name=_require_text(first_name, "first_name"),
            last_name=_require_text(last_name, "last_name"),
            birth_date=birth_date,
            sex=sex,
            email=email,
            phone=phone,
            registered_by_establishment=registered_by_establishment,
        )

    @property
    def display_name(self) -> str:
        if self.first_name is None or self.last_name is None:
            return ERASED_NAME
        return f"{self.first_name} {self.last_name}"

    def change_contact_details(self, email: str, phone: str) -> None:
        self.require_not_erased()
        email, phone = _check_contact(email, phone)
        if (email, phone) != (self.email, self.phone):
            self._contact_details_changed(email, phone)

    @event("ContactDetailsChanged")
    def _contact_details_changed(self, email: str, phone: str) -> None:
        self.email = email
        self.phone = phone

    def require_not_erased(self) -> None:
        if self.erased:
            raise DataErased("the patient's data has been erased", field="patient_id")

    def erase(self) -> None:
        """Record the erasure (GDPR Art. 17): the personal fields are gone from
        here on, and the key they were stored under is destroyed with it."""
        self.require_not_erased()
        self._erased()

    @event("Erased")
    def _erased(self) -> None:
        self.first_name = self.last_name = self.email = self.phone = None
        self.birth_date = self.sex = None
        self.erased = True


# What a name reads as once its patient is erased.
ERASED_NAME = "(erased)"


def _check_contact(email: str, phone: str) -> tuple[str, str]:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 254:
        raise InvalidValue("not an email address", field="email")
    phone = phone.strip()
    if not _PHONE.match(phone):
        raise InvalidValue("not a phone number", field="phone")
    return email, phone


class Basis(enum.StrEnum):
    """Why an establishment knows a patient (besides having registered them)."""

    BOOKED = "booked"  # an appointment there, whoever booked it, whatever became of it
    CONSENTED = "consented"  # the patient allowed it to book for them


class CareRelationship(Aggregate):
    """That a patient is known at an establishment, so its practice may book for them.

    One per (establishment, patient), under a deterministic id: the first
    booking or consent creates it in the same append as itself, and two such
    firsts race on its version, so it is written once and never lost. It lives
    in the log, so no read-model rebuild can make a practice forget a patient.
    """

    @event("Started")
    def __init__(self, establishment_id: UUID, patient_id: UUID, basis: Basis) -> None:
        self.establishment_id = establishment_id
        self.patient_id = patient_id
        self.basis = basis

    @staticmethod
    def create_id(establishment_id: UUID, patient_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/relationship/{establishment_id}/{patient_id}")

    @classmethod
    def start(cls, establishment_id: UUID, patient_id: UUID, basis: Basis) -> "CareRelationship":
        return cls(establishment_id=establishment_id, patient_id=patient_id, basis=basis)


def known_at(
    establishment_id: UUID, patient: Patient, relationship: CareRelationship | None
) -> bool:
    """Whether the establishment's practice may book for this patient.

    It must know them already, or booking would let it read the name of any
    patient whose id it holds off its own agenda ("book-to-reveal").
    """
    return relationship is not None or patient.registered_by_establishment == establishment_id
