"""GET /me/export: everything Carnet holds about a patient (GDPR Art. 15 and 20),
as JSON and as a FHIR R4 Bundle validated against the R4 resource models of
`fhir.resources` (R4B: R4's Patient, Appointment and AuditEvent)."""

from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.patient import Patient as FhirPatient

from tests.e2e.ledger_support import LedgerWatch, settled
from tests.e2e.support import WEDNESDAY, booked, ok, paris


async def _history(client, world) -> str:
    """Alice books twice and cancels one, saying why; her practitioner reads the
    other; she changes her contact details."""
    dropped = await booked(client, world, paris(WEDNESDAY, "10:00"))
    await ok(
        await client.post(
            f"/appointments/{dropped['id']}/cancel",
            json={"reason": "Ma raison à moi"},
            headers=world.auth("patient"),
        )
    )
    appointment = await booked(client, world, paris(WEDNESDAY, "09:00"))
    await ok(
        await client.get(f"/appointments/{appointment['id']}", headers=world.auth("practitioner"))
    )
    await ok(
        await client.put(
            f"/patients/{world.patient}/contact",
            json={"email": "alice@new.example.org", "phone": "+33 6 44 44 44 44"},
            headers=world.auth("patient"),
        )
    )
    return appointment["id"]


async def test_a_patient_exports_everything_held_about_them_as_json(client, world, pool):
    appointment_id = await _history(client, world)
    watch = LedgerWatch(pool)
    await watch.mark()
    body = await ok(await client.get("/me/export", headers=world.auth("patient")))

    assert body["patient"]["id"] == str(world.patient)
    assert (body["patient"]["first_name"], body["patient"]["email"]) == (
        "Alice",
        "alice@new.example.org",
    )
    assert body["patient"]["birth_date"] == "1980-01-01"
    shown = {a["id"]: a for a in body["appointments"]}
    assert len(shown) == 2 and shown[appointment_id]["status"] == "booked"
    assert [a["cancellation_reason"] for a in shown.values() if a["status"] == "cancelled"] == [
        "Ma raison à moi"
    ]
    assert [c["email"] for c in body["contact_history"]] == [
        "alice@example.org",
        "alice@new.example.org",
    ]
    assert any(e["actor"] != "You" and e["action"] == "read" for e in body["access_log"])
    (entry,) = settled(await watch.new())
    assert (entry.record.action, entry.record.resource_type) == ("export", "patient")
    assert str(world.patient) in entry.record.patient_ids


async def test_the_export_as_fhir_is_a_valid_r4_bundle(client, world):
    appointment_id = await _history(client, world)
    response = await client.get(
        "/me/export", params={"format": "fhir"}, headers=world.auth("patient")
    )
    assert response.status == 200
    assert response.content_type == "application/fhir+json"
    raw = await response.json(content_type=None)
    bundle = FhirBundle.model_validate(raw)
    assert bundle.type == "collection"
    kinds: dict[str, list] = {}
    for entry in raw["entry"]:
        kinds.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    (patient,) = [FhirPatient.model_validate(r) for r in kinds["Patient"]]
    assert patient.gender == "other" and str(patient.birthDate) == "1980-01-01"
    assert {t.system: t.value for t in patient.telecom} == {
        "email": "alice@new.example.org",
        "phone": "+33 6 44 44 44 44",
    }
    appointments = {r["id"]: FhirAppointment.model_validate(r) for r in kinds["Appointment"]}
    appointment = appointments.pop(appointment_id)
    assert appointment.status == "booked"
    assert appointment.participant[0].actor.reference == f"Patient/{world.patient}"
    (cancelled,) = appointments.values()
    assert cancelled.status == "cancelled"
    assert cancelled.cancelationReason.text == "Ma raison à moi"
    audits = [FhirAuditEvent.model_validate(r) for r in kinds["AuditEvent"]]
    assert audits and all(a.agent[0].requestor for a in audits)
    assert {a.action for a in audits} <= {"C", "R", "U", "D", "E"}


async def test_only_a_patient_s_own_token_exports(client, world):
    for who in ("practitioner", "staff", "admin", "integration", "analyst"):
        response = await client.get("/me/export", headers=world.auth(who))
        assert response.status == 403, who
        assert response.content_type == "application/problem+json"


async def test_a_bad_format_is_a_400_naming_the_field(client, world):
    response = await client.get(
        "/me/export", params={"format": "xml\u0000"}, headers=world.auth("patient")
    )
    assert response.status == 400
    assert (await response.json())["field"] == "format"
