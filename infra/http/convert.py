"""Domain objects to response Structs."""

from domain.agenda import Appointment
from domain.directory import Establishment, Patient, Practitioner
from infra.http.schemas import (
    AbsenceOut,
    AppointmentOut,
    EstablishmentOut,
    HoursOut,
    MotiveOut,
    PatientOut,
    PolicyOut,
    PractitionerOut,
)
from services.ports import EstablishmentRow, PractitionerRow


def appointment_out(a: Appointment) -> AppointmentOut:
    return AppointmentOut(
        id=a.id,
        patient_id=a.patient_id,
        practitioner_id=a.practitioner_id,
        establishment_id=a.establishment_id,
        motive_id=a.motive_id,
        start=a.start,
        end=a.end,
        status=a.status.value,
        source=a.source.value,
        replaces=a.replaces,
        replaced_by=a.replaced_by,
        cancellation_reason=a.cancellation_reason,
    )


def establishment_out(e: Establishment | EstablishmentRow) -> EstablishmentOut:
    return EstablishmentOut(
        id=e.id, name=e.name, address=e.address, city=e.city, timezone=e.timezone
    )


def practitioner_out(p: Practitioner | PractitionerRow) -> PractitionerOut:
    motives = p.motives.values() if isinstance(p.motives, dict) else p.motives
    return PractitionerOut(
        id=p.id,
        name=p.name,
        specialty=p.specialty,
        establishment_id=p.establishment_id,
        timezone=p.timezone,
        motives=[
            MotiveOut(id=m.id, name=m.name, duration_minutes=m.duration_minutes, online=m.online)
            for m in motives
        ],
        hours=[HoursOut(weekday=h.weekday, start=h.start, end=h.end) for h in p.hours],
        absences=[AbsenceOut(start=a.start, end=a.end, reason=a.reason) for a in p.absences],
        policy=PolicyOut(
            min_notice_minutes=p.policy.min_notice_minutes,
            horizon_days=p.policy.horizon_days,
            cancellation_window_minutes=p.policy.cancellation_window_minutes,
        ),
    )


def patient_out(p: Patient) -> PatientOut:
    return PatientOut(
        id=p.id,
        first_name=p.first_name,
        last_name=p.last_name,
        birth_date=p.birth_date,
        sex=p.sex.value,
        email=p.email,
        phone=p.phone,
    )
