"""The route table: the one list that both wires aiohttp and documents the API."""

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from infra.http import admin_routes as ad
from infra.http import handlers as h
from infra.http import ledger_routes as lg
from infra.http import reads as r
from infra.http import rights_routes as rr
from infra.http import schemas as s
from infra.http import scope_routes as sc
from infra.http.audit import Audit, audited
from services.scoping import Scope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READ_ERRORS = (400, 401, 404, 503)
WRITE_ERRORS = (400, 401, 403, 404, 409, 410, 413, 415, 422, 503)
# A patient's own record, once erased (GDPR Art. 17): 410 Gone.
PATIENT_ERRORS = (*READ_ERRORS, 410)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    response: type | None
    status: int = 200
    body: type | None = None
    # The body may be left out altogether (the defaults apply).
    body_optional: bool = False
    query: type | None = None
    errors: tuple[int, ...] = READ_ERRORS
    public: bool = False
    headers: tuple[str, ...] = ()
    # Statuses answered with the response schema rather than problem+json.
    also: tuple[int, ...] = ()
    # Answered from a read model: accepts Carnet-Min-Position / min_position.
    read_model: bool = False
    # Touches personal data: every call lands in the access ledger.
    audit: Audit | None = None
    # Media types the success may also come in (on request), besides application/json.
    media: tuple[str, ...] = ()


ROTATED = ad.ISSUED_FIELDS  # a rotation's answer: the old token's state, the new one

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/me/access-log",
        lg.my_access_log,
        "Who saw or changed my data, when, and what (patients)",
        "patients",
        s.AccessLogOut,
        errors=(401, 403, 503),
        audit=Audit("access-log", "read"),
    ),
    Route(
        "GET",
        "/me/export",
        rr.my_export,
        "Everything Carnet holds about me, as JSON or as a FHIR R4 Bundle (GDPR Art. 15, 20)",
        "patients",
        s.ExportOut,
        query=s.ExportQuery,
        errors=(400, 401, 403, 404, 410, 503),
        audit=Audit("patient", "export"),
        media=("application/fhir+json",),
    ),
    Route(
        "GET",
        "/ledger",
        lg.ledger,
        "The access ledger, filtered and paged (analysts); reading it is recorded in it",
        "analysts",
        s.LedgerOut,
        query=s.LedgerQueryIn,
        errors=(400, 401, 403, 503),
        read_model=True,
        audit=Audit("access-log", "search"),
    ),
    Route(
        "GET",
        "/establishments",
        r.list_establishments,
        "Establishments, optionally in one city",
        "directory",
        s.EstablishmentList,
        query=s.EstablishmentsQuery,
        read_model=True,
    ),
    Route(
        "GET",
        "/practitioners",
        r.list_practitioners,
        "Practitioners by specialty and city",
        "directory",
        s.PractitionerList,
        query=s.PractitionersQuery,
        read_model=True,
    ),
    Route(
        "GET",
        "/availability",
        r.search,
        "Free slots by specialty, city and date range (at most 31 days)",
        "booking",
        s.SearchOut,
        query=s.SearchQuery,
        errors=(*READ_ERRORS, 422),  # a range backwards or over 31 days
        read_model=True,
    ),
    Route(
        "GET",
        "/patients/{patient_id}/appointments",
        r.patient_appointments,
        "A patient's appointments, with practitioner, address and status",
        "patients",
        s.PatientAppointmentsOut,
        read_model=True,
        audit=Audit("appointment", "search", ("patient_id",)),
    ),
    Route(
        "POST",
        "/establishments",
        h.register_establishment,
        "Register an establishment",
        "directory",
        s.EstablishmentOut,
        201,
        s.RegisterEstablishment,
        errors=WRITE_ERRORS,
    ),
    Route(
        "GET",
        "/establishments/{establishment_id}",
        r.get_establishment,
        "Get an establishment",
        "directory",
        s.EstablishmentOut,
        read_model=True,
    ),
    Route(
        "POST",
        "/practitioners",
        h.register_practitioner,
        "Register a practitioner",
        "directory",
        s.PractitionerOut,
        201,
        s.RegisterPractitioner,
        errors=WRITE_ERRORS,
    ),
    Route(
        "GET",
        "/practitioners/{practitioner_id}",
        r.get_practitioner,
        "Get a practitioner with motives and opening hours",
        "directory",
        s.PractitionerOut,
        read_model=True,
    ),
    Route(
        "POST",
        "/practitioners/{practitioner_id}/motives",
        h.add_motive,
        "Add a visit motive",
        "directory",
        s.PractitionerOut,
        201,
        s.MotiveIn,
        errors=WRITE_ERRORS,
    ),
    Route(
        "PUT",
        "/practitioners/{practitioner_id}/hours",
        h.set_opening_hours,
        "Replace the weekly opening hours",
        "directory",
        s.PractitionerOut,
        200,
        s.SetOpeningHours,
        errors=WRITE_ERRORS,
    ),
    Route(
        "POST",
        "/practitioners/{practitioner_id}/absences",
        h.add_absence,
        "Add an absence",
        "directory",
        s.PractitionerOut,
        201,
        s.AddAbsence,
        errors=WRITE_ERRORS,
    ),
    Route(
        "GET",
        "/practitioners/{practitioner_id}/availability",
        r.availability,
        "Free slots for a motive over a date range (at most 31 days)",
        "booking",
        s.AvailabilityOut,
        query=s.AvailabilityQuery,
        errors=(*READ_ERRORS, 422),
        read_model=True,
    ),
    Route(
        "GET",
        "/practitioners/{practitioner_id}/agenda",
        r.agenda,
        "A practitioner's appointments on one local date",
        "booking",
        s.AgendaOut,
        query=s.AgendaQuery,
        read_model=True,
        audit=Audit("agenda", "read", ("practitioner_id",)),
    ),
    Route(
        "POST",
        "/patients",
        h.register_patient,
        "Register a patient",
        "patients",
        s.Created,
        201,
        s.RegisterPatient,
        errors=WRITE_ERRORS,
        audit=Audit("patient", "create", describe=h.describe_registration),
    ),
    Route(
        "GET",
        "/patients/{patient_id}",
        h.get_patient,
        "Get a patient's profile",
        "patients",
        s.PatientOut,
        errors=PATIENT_ERRORS,
        audit=Audit("patient", "read", ("patient_id",)),
    ),
    Route(
        "PUT",
        "/patients/{patient_id}/contact",
        h.change_contact_details,
        "Change a patient's contact details",
        "patients",
        s.PatientOut,
        200,
        s.ChangeContactDetails,
        errors=WRITE_ERRORS,
        audit=Audit("patient", "change", ("patient_id",), h.describe_contact),
    ),
    Route(
        "POST",
        "/patients/{patient_id}/consents",
        h.give_consent,
        "Let an establishment's practice book for this patient (the patient, or an admin)",
        "patients",
        s.ConsentOut,
        200,
        s.GiveConsent,
        errors=WRITE_ERRORS,
        audit=Audit("patient", "change", ("patient_id",), h.describe_consent),
    ),
    Route(
        "POST",
        "/patients/{patient_id}/erasure",
        h.erase_patient,
        "Erase a patient's personal data (GDPR Art. 17; the patient, or an admin): future "
        "appointments cancelled, tokens revoked, the data key destroyed",
        "patients",
        s.ErasureOut,
        200,
        errors=WRITE_ERRORS,
        audit=Audit("patient", "delete", ("patient_id",)),
    ),
    Route(
        "POST",
        "/appointments",
        h.book,
        "Book an appointment",
        "booking",
        s.AppointmentOut,
        201,
        s.BookAppointment,
        errors=WRITE_ERRORS,
        headers=("Idempotency-Key",),
        audit=Audit("appointment", "create", describe=h.describe_appointments),
    ),
    Route(
        "GET",
        "/appointments/{appointment_id}",
        h.get_appointment,
        "Get an appointment",
        "booking",
        s.AppointmentOut,
        audit=Audit("appointment", "read", ("appointment_id",)),
    ),
    Route(
        "POST",
        "/appointments/{appointment_id}/cancel",
        h.cancel,
        "Cancel an appointment",
        "booking",
        s.AppointmentOut,
        200,
        s.CancelAppointment,
        errors=WRITE_ERRORS,
        audit=Audit("appointment", "change", ("appointment_id",), h.describe_appointments),
    ),
    Route(
        "POST",
        "/appointments/{appointment_id}/reschedule",
        h.reschedule,
        "Move an appointment: the new one replaces it, atomically",
        "booking",
        s.AppointmentOut,
        201,
        s.RescheduleAppointment,
        errors=WRITE_ERRORS,
        audit=Audit("appointment", "change", ("appointment_id",), h.describe_appointments),
    ),
    Route(
        "POST",
        "/appointments/{appointment_id}/noshow",
        h.mark_noshow,
        "Mark an appointment as a no-show",
        "booking",
        s.AppointmentOut,
        errors=WRITE_ERRORS,
        audit=Audit("appointment", "change", ("appointment_id",), h.describe_appointments),
    ),
    Route(
        "POST",
        "/appointments/{appointment_id}/fulfilled",
        h.mark_fulfilled,
        "Mark an appointment as fulfilled",
        "booking",
        s.AppointmentOut,
        errors=WRITE_ERRORS,
        audit=Audit("appointment", "change", ("appointment_id",), h.describe_appointments),
    ),
    Route(
        "POST",
        "/admin/tokens",
        ad.issue_token,
        "Issue a bearer token for an actor; its secret is shown this once",
        "admin",
        s.TokenOut,
        201,
        s.IssueToken,
        errors=WRITE_ERRORS,
        audit=Audit("token", "create", describe=ad.describe_tokens(*ad.ISSUED_FIELDS)),
    ),
    Route(
        "GET",
        "/admin/tokens",
        ad.list_tokens,
        "Tokens (admins): label, actor, state, expiry, last use; never a secret",
        "admin",
        s.TokenListOut,
        query=s.TokensQuery,
        errors=(400, 401, 403, 503),
        audit=Audit("token", "search"),
    ),
    Route(
        "POST",
        "/tokens/{token_id}/revoke",
        ad.revoke_token,
        "Revoke a token (an admin any token, anyone their own); holds from the next request",
        "admin",
        s.TokenStateOut,
        200,
        s.RevokeToken,
        errors=WRITE_ERRORS,
        audit=Audit("token", "change", ("token_id",), ad.describe_tokens("state")),
    ),
    Route(
        "POST",
        "/admin/tokens/{token_id}/lift-suspension",
        ad.lift_suspension,
        "Lift a token's automatic suspension",
        "admin",
        s.TokenStateOut,
        errors=(401, 403, 404, 409, 422, 503),
        audit=Audit("token", "change", ("token_id",), ad.describe_tokens("state")),
    ),
    Route(
        "POST",
        "/admin/tokens/{token_id}/rotate",
        ad.rotate_token,
        "Rotate a token: a new secret for the same actor, the old token revoked (`rotated`); "
        "the body is optional",
        "admin",
        s.TokenOut,
        201,
        s.RotateToken,
        body_optional=True,
        errors=WRITE_ERRORS,
        audit=Audit(
            "token", "change", ("token_id",), ad.describe_tokens("state", *ad.ISSUED_FIELDS)
        ),
    ),
    Route(
        "GET",
        "/admin/grants",
        ad.list_grants,
        "Integration grants in force (admins), by practitioner and integration",
        "integrations",
        s.GrantListOut,
        query=s.GrantsQuery,
        errors=(400, 401, 403, 503),
        audit=Audit("grant", "search"),
    ),
    Route(
        "GET",
        "/practitioners/{practitioner_id}/grants",
        ad.practitioner_grants,
        "The integrations granted scopes on this practitioner's agenda (the practitioner, "
        "their establishment's staff, an admin)",
        "integrations",
        s.GrantListOut,
        query=s.PractitionerGrantsQuery,
        audit=Audit("grant", "search", ("practitioner_id",)),
    ),
    Route(
        "PUT",
        "/practitioners/{practitioner_id}/grants/{integration_id}",
        ad.grant,
        "Grant an integration scopes on this practitioner's agenda",
        "integrations",
        s.GrantOut,
        200,
        s.GrantScopes,
        errors=WRITE_ERRORS,
        audit=Audit("grant", "change", ("practitioner_id", "integration_id"), ad.describe_grants),
    ),
    Route(
        "DELETE",
        "/practitioners/{practitioner_id}/grants/{integration_id}",
        ad.revoke_grant,
        "Revoke an integration's grant; holds from its next request",
        "integrations",
        s.GrantOut,
        errors=(401, 404, 409, 503),
        audit=Audit("grant", "delete", ("practitioner_id", "integration_id"), ad.describe_grants),
    ),
    Route(
        "POST",
        "/analyst/scopes",
        sc.scope,
        "Scope a breach (analysts): records disclosed with their values as of then, patients "
        "to notify, attempts, anomaly start; the answer is scope.json, recorded in the ledger",
        "analysts",
        Scope,
        200,
        sc.ScopeRequest,
        errors=(400, 401, 403, 409, 413, 415, 422, 503),
        audit=Audit("scope", "export"),
    ),
    Route("GET", "/healthz", h.healthz, "Liveness", "operations", s.Health, public=True, errors=()),
    Route(
        "GET",
        "/readyz",
        h.readyz,
        "Readiness: database and NATS reachable",
        "operations",
        s.Health,
        public=True,
        errors=(),
        also=(503,),
    ),
)


# aiohttp's default id pattern refuses braces: "/appointments/{<uuid>}" would
# then miss the route and its ledger entry. Every id reaches its handler,
# whose path_id() answers a malformed id exactly as an unknown one.
_ANY_ID = re.compile(r"{(\w+)}")


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        handler = route.handler if route.audit is None else audited(route.audit, route.handler)
        app.router.add_route(route.method, _ANY_ID.sub(r"{\1:[^/]+}", route.path), handler)
