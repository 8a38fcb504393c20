"""A patient's export as a FHIR R4 Bundle (GDPR Art. 20: in a format other health
software reads): one Patient, an Appointment per appointment, an AuditEvent per
line of their access log. tests/e2e/test_export.py validates it against the
R4 resource models of `fhir.resources`.
"""

from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from services.ports import AccessLogEntry, PatientAppointment
from services.rights import PatientExport

CONTENT_TYPE = "application/fhir+json"
_SYSTEM = "urn:carnet"
# Carnet's statuses are FHIR's Appointment.status codes already.
_STATUS = {
    "booked": "booked",
    "cancelled": "cancelled",
    "noshow": "noshow",
    "fulfilled": "fulfilled",
}
# AuditEvent.action: C(reate) R(ead) U(pdate) D(elete) E(xecute).
_ACTION = {"read": "R", "search": "E", "export": "R", "create": "C", "change": "U", "delete": "D"}
# AuditEvent.outcome (R4): 0 success, 4 minor failure (a refusal).
_OUTCOME = {"allowed": "0"}


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _patient(export: PatientExport) -> dict[str, Any]:
    p = export.patient
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(p.id),
        "identifier": [{"system": f"{_SYSTEM}:patient", "value": str(p.id)}],
    }
    if p.first_name is not None or p.last_name is not None:
        name: dict[str, Any] = {"use": "official"}
        if p.last_name is not None:
            name["family"] = p.last_name
        if p.first_name is not None:
            name["given"] = [p.first_name]
        resource["name"] = [name]
    telecom = [
        {"system": system, "value": value}
        for system, value in (("phone", p.phone), ("email", p.email))
        if value is not None
    ]
    if telecom:
        resource["telecom"] = telecom
    if p.sex is not None:
        resource["gender"] = p.sex  # female | male | other | unknown: FHIR's own codes
    if p.birth_date is not None:
        resource["birthDate"] = p.birth_date.isoformat()
    return resource


def _appointment(a: PatientAppointment, patient_id: UUID) -> dict[str, Any]:
    practitioner: dict[str, Any] = {"reference": f"Practitioner/{a.practitioner_id}"}
    if a.practitioner_name:
        practitioner["display"] = a.practitioner_name
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": str(a.appointment_id),
        "status": _STATUS.get(a.status, "entered-in-error"),
        "start": _instant(a.start),
        "end": _instant(a.end),
        "appointmentType": {"coding": [{"system": f"{_SYSTEM}:motive", "code": a.motive_id}]},
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": practitioner, "status": "accepted"},
        ],
    }
    if a.cancellation_reason:
        resource["cancelationReason"] = {"text": a.cancellation_reason}  # FHIR's spelling
    if a.establishment_name:
        where = ", ".join(x for x in (a.establishment_name, a.address, a.city) if x)
        resource["participant"].append(
            {"actor": {"display": where, "type": "Location"}, "status": "accepted"}
        )
    return resource


def _audit_event(e: AccessLogEntry, patient_id: UUID) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid5(NAMESPACE_URL, f"carnet:access:{e.sequence}")),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "action": _ACTION.get(e.action, "E"),
        "recorded": _instant(e.at),
        "outcome": _OUTCOME.get(e.outcome, "4"),
        "agent": [{"who": {"display": e.actor}, "requestor": True}],
        "source": {"observer": {"display": "Carnet"}},
        "entity": [
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "description": f"{e.resource_type}: {', '.join(e.fields) or 'no field'}",
            }
        ],
    }


def bundle(export: PatientExport, now: datetime) -> dict[str, Any]:
    """The export as a FHIR R4 Bundle of type `collection`."""
    patient_id = export.patient.id
    resources = [
        _patient(export),
        *(_appointment(a, patient_id) for a in export.appointments),
        *(_audit_event(e, patient_id) for e in export.access_log),
    ]
    return {
        "resourceType": "Bundle",
        "id": str(uuid5(NAMESPACE_URL, f"carnet:export:{patient_id}:{now.isoformat()}")),
        "type": "collection",
        "timestamp": _instant(now),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
