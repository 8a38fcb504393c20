"""Domain objects to response Structs."""

from domain.agenda import Appointment
from domain.directory import Establishment, Patient, Practitioner
from domain.errors import DataErased
from infra.http import schemas as s
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
from services.ports import AccessLogEntry, EstablishmentRow, PatientAppointment, PractitionerRow


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


def patient_fields(p: Patient) -> dict[str, object]:
    """What `patient_out` shows, as builtins, for a replay: an erased patient's
    fields are None (erased) rather than a refusal."""
    return {
        "id": str(p.id),
        "first_name": p.first_name,
        "last_name": p.last_name,
        "birth_date": p.birth_date.isoformat() if p.birth_date is not None else None,
        "sex": p.sex.value if p.sex is not None else None,
        "email": p.email,
        "phone": p.phone,
    }


def patient_out(p: Patient) -> PatientOut:
    # The service answers 410 for an erased patient: every field is there.
    if p.erased or None in (p.first_name, p.last_name, p.birth_date, p.sex, p.email, p.phone):
        raise DataErased("the patient's data has been erased", field="patient_id")
    assert p.first_name is not None and p.last_name is not None and p.birth_date is not None
    assert p.sex is not None and p.email is not None and p.phone is not None
    return PatientOut(
        id=p.id,
        first_name=p.first_name,
        last_name=p.last_name,
        birth_date=p.birth_date,
        sex=p.sex.value,
        email=p.email,
        phone=p.phone,
    )


def patient_appointment_out(a: PatientAppointment) -> s.PatientAppointmentOut:
    return s.PatientAppointmentOut(
        id=a.appointment_id,
        practitioner_id=a.practitioner_id,
        practitioner_name=a.practitioner_name,
        specialty=a.specialty,
        establishment_id=a.establishment_id,
        establishment_name=a.establishment_name,
        address=a.address,
        city=a.city,
        motive_id=a.motive_id,
        start=a.start,
        end=a.end,
        status=a.status,
        replaces=a.replaces,
        replaced_by=a.replaced_by,
    )


def access_log_entry_out(e: AccessLogEntry) -> s.AccessLogEntryOut:
    return s.AccessLogEntryOut(
        at=e.at,
        actor=e.actor,
        action=e.action,
        resource_type=e.resource_type,
        outcome=e.outcome,
        fields=list(e.fields),
        identified=e.identified,
    )
