"""Value objects shared by the aggregates. Frozen dataclasses: they travel
inside events, so they must be plain, comparable and serialisable."""

import enum
from dataclasses import dataclass
from datetime import datetime, time
from uuid import UUID


class Source(enum.StrEnum):
    """Who created or changed an appointment (FHIR-like provenance)."""

    PATIENT = "patient"
    PRACTITIONER = "practitioner"
    STAFF = "staff"
    INTEGRATION = "integration"


class Status(enum.StrEnum):
    """HL7 FHIR Appointment.status subset."""

    BOOKED = "booked"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"
    FULFILLED = "fulfilled"


class Sex(enum.StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Motive:
    """A visit motive: what the patient comes for, and how long it takes."""

    id: str
    name: str
    duration_minutes: int
    online: bool = True


@dataclass(frozen=True)
class OpeningHours:
    """One weekly opening interval in the practitioner's local wall-clock time.

    Wall-clock, not UTC: "09:00 on Mondays" must stay 09:00 across DST changes.
    Each concrete day is turned into instants by `calendar.opening_intervals`.
    """

    weekday: int  # 0 = Monday, as datetime.weekday()
    start: time
    end: time


@dataclass(frozen=True)
class Absence:
    start: datetime
    end: datetime
    reason: str = ""


@dataclass(frozen=True)
class BookingPolicy:
    min_notice_minutes: int = 60
    horizon_days: int = 90
    cancellation_window_minutes: int = 240


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime

    def overlaps(self, other: "Interval") -> bool:
        return self.start < other.end and other.start < self.end

    def within(self, other: "Interval") -> bool:
        return other.start <= self.start and self.end <= other.end


@dataclass(frozen=True)
class Booking:
    """What an agenda day knows of an appointment: only its time."""

    appointment_id: UUID
    start: datetime
    end: datetime

    @property
    def interval(self) -> Interval:
        return Interval(self.start, self.end)
