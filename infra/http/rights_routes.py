"""Patients' rights over HTTP: export (GDPR Art. 15 and 20), as JSON or FHIR R4."""

import msgspec
from aiohttp import web

from infra.http import fhir
from infra.http import schemas as s
from infra.http.audit import disclosed, note
from infra.http.convert import access_log_entry_out, patient_appointment_out
from infra.http.keys import actor_of, services_of
from infra.http.reads import behind
from infra.http.wire import read_query, reply
from infra.readmodels import NotCaughtUp

EXPORT_FIELDS = (
    *s.ExportPatientOut.__struct_fields__,
    *s.ExportAppointmentOut.__struct_fields__,
    *s.ContactChangeOut.__struct_fields__,
    *s.AccessLogEntryOut.__struct_fields__,
)


async def my_export(request: web.Request) -> web.Response:
    """GET /me/export: everything Carnet holds about the patient whose token it is."""
    query = read_query(request, s.ExportQuery)
    actor = actor_of(request)
    services = services_of(request)
    # Everything the log held when asked: the read models it lists from first catch up.
    head = await services.read.store.last_position()
    try:
        if head:
            await services.read.wait_for(head, ["patient_view", "access_log"])
    except NotCaughtUp as e:
        raise behind(e, "The read models have not caught up yet") from None
    export = await services.rights.export(actor)
    now = services.clock.now()
    patient_id = export.patient.id
    note(
        request,
        items=[
            disclosed(patient_id, patient_id=patient_id, fields=EXPORT_FIELDS, identified=True),
            *(
                disclosed(
                    a.appointment_id,
                    patient_id=patient_id,
                    practitioner_id=a.practitioner_id,
                    establishment_id=a.establishment_id,
                    fields=tuple(s.PatientAppointmentOut.__struct_fields__),
                    identified=True,
                )
                for a in export.appointments
            ),
        ],
        as_of=head,
    )
    if query.format == "fhir":
        return web.json_response(fhir.bundle(export, now), content_type=fhir.CONTENT_TYPE)
    p = export.patient
    return reply(
        s.ExportOut(
            exported_at=now,
            patient=s.ExportPatientOut(
                id=p.id,
                first_name=p.first_name,
                last_name=p.last_name,
                birth_date=p.birth_date,
                sex=p.sex,
                email=p.email,
                phone=p.phone,
                registered_at=p.registered_at,
                registered_by_establishment=p.registered_by_establishment,
            ),
            appointments=[
                s.ExportAppointmentOut(
                    **msgspec.structs.asdict(patient_appointment_out(a)),
                    cancellation_reason=a.cancellation_reason,
                )
                for a in export.appointments
            ],
            contact_history=[
                s.ContactChangeOut(at=c.at, email=c.email, phone=c.phone)
                for c in export.contact_history
            ],
            access_log=[access_log_entry_out(e) for e in export.access_log],
        )
    )
