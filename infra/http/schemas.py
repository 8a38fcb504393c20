"""Wire types for the HTTP API. msgspec validates bodies and query strings
into these, renders responses from them, and generates the OpenAPI document.
Every field added later gets a default, so old clients keep working."""

from datetime import date, datetime, time
from typing import Annotated, Literal
from uuid import UUID

import msgspec

# Text that enters the log (DESIGN decision 10): no NUL, no C0 or C1 control
# and no unpaired surrogate, bounded; the edge also normalises it to NFC
# (infra/http/wire.py). Free text (reasons) may hold tabs and line breaks.
ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*$"
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]*$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=ONE_LINE)]
Label = Annotated[str, msgspec.Meta(max_length=200, pattern=ONE_LINE)]
Email = Annotated[str, msgspec.Meta(max_length=254, pattern=ONE_LINE)]
Phone = Annotated[str, msgspec.Meta(max_length=32, pattern=ONE_LINE)]
TimeZone = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_+\-/]*$")
]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=ONE_LINE)]
LedgerText = Annotated[str, msgspec.Meta(max_length=64, pattern=ONE_LINE)]
Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")]
Minutes = Annotated[int, msgspec.Meta(ge=0, le=60 * 24 * 365)]
Weekday = Annotated[int, msgspec.Meta(ge=0, le=6, description="0 = Monday … 6 = Sunday")]
Reason = Annotated[str, msgspec.Meta(max_length=500, pattern=MULTI_LINE)]
SexIn = Literal["female", "male", "other", "unknown"]
ActorKindIn = Literal[
    "patient", "practitioner", "staff", "integration", "analyst", "operator", "admin"
]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Unknown fields are refused: a typo must not silently change nothing."""


# -- requests -------------------------------------------------------------


class MotiveIn(Strict):
    id: Slug
    name: Name
    duration_minutes: Annotated[int, msgspec.Meta(ge=5, le=480)]
    online: bool = True


# Opening hours are local wall-clock times in the establishment's zone: no offset.
WallClock = Annotated[time, msgspec.Meta(tz=False)]


class HoursIn(Strict):
    weekday: Weekday
    start: WallClock
    end: WallClock


class PolicyIn(Strict):
    min_notice_minutes: Minutes = 60
    horizon_days: Annotated[int, msgspec.Meta(ge=1, le=730)] = 90
    cancellation_window_minutes: Minutes = 240


class RegisterEstablishment(Strict):
    name: Name
    address: Name
    city: Name
    timezone: TimeZone = "Europe/Paris"


class RegisterPractitioner(Strict):
    name: Name
    specialty: Name
    establishment_id: UUID
    motives: list[MotiveIn] = []
    hours: list[HoursIn] = []
    policy: PolicyIn = msgspec.field(default_factory=PolicyIn)


class SetOpeningHours(Strict):
    hours: list[HoursIn]


class AddAbsence(Strict):
    start: datetime
    end: datetime
    reason: Reason = ""


class RegisterPatient(Strict):
    first_name: Name
    last_name: Name
    birth_date: date
    sex: SexIn
    email: Email
    phone: Phone


class ChangeContactDetails(Strict):
    email: Email
    phone: Phone


class BookAppointment(Strict):
    practitioner_id: UUID
    motive_id: Slug
    start: datetime
    end: datetime | None = None
    patient_id: UUID | None = None


class GiveConsent(Strict):
    establishment_id: UUID


class CancelAppointment(Strict):
    reason: Reason = ""


class RescheduleAppointment(Strict):
    start: datetime


class IssueToken(Strict):
    actor_kind: ActorKindIn
    actor_id: UUID | None = None
    establishment_id: UUID | None = None
    label: Label = ""
    valid_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class RevokeToken(Strict):
    reason: Reason = ""


class RotateToken(Strict):
    # Days the new token is valid; by default the old one's validity period (or none).
    valid_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


TokenStateIn = Literal["active", "revoked", "suspended"]
Cursor = Annotated[int, msgspec.Meta(ge=0, description="the `next` of the previous page")]
PageSize = Annotated[int, msgspec.Meta(ge=1, le=500)]


class TokensQuery(Strict):
    actor_id: UUID | None = None
    actor_kind: ActorKindIn | None = None
    state: TokenStateIn | None = None
    establishment_id: UUID | None = None
    after: Cursor = 0
    limit: PageSize = 100


class GrantsQuery(Strict):
    practitioner_id: UUID | None = None
    integration_id: UUID | None = None
    after: Cursor = 0
    limit: PageSize = 100


class PractitionerGrantsQuery(Strict):
    integration_id: UUID | None = None
    after: Cursor = 0
    limit: PageSize = 100


ScopeIn = Literal["agenda:read", "appointments:write", "patients:contact:read"]


class GrantScopes(Strict):
    scopes: Annotated[list[ScopeIn], msgspec.Meta(min_length=1, max_length=3)]


class AvailabilityQuery(Strict):
    motive_id: Slug
    from_: date = msgspec.field(name="from")
    to: date


class AgendaQuery(Strict):
    date: date


class EstablishmentsQuery(Strict):
    city: SearchText | None = None


class PractitionersQuery(Strict):
    specialty: SearchText | None = None
    city: SearchText | None = None


class SearchQuery(Strict):
    from_: date = msgspec.field(name="from")
    to: date
    specialty: SearchText | None = None
    city: SearchText | None = None
    motive_id: Slug | None = None


# -- responses ------------------------------------------------------------


class Out(msgspec.Struct, kw_only=True):
    pass


class EstablishmentOut(Out):
    id: UUID
    name: str
    address: str
    city: str
    timezone: str


class MotiveOut(Out):
    id: str
    name: str
    duration_minutes: int
    online: bool


class HoursOut(Out):
    weekday: int
    start: time
    end: time


class AbsenceOut(Out):
    start: datetime
    end: datetime
    reason: str


class PolicyOut(Out):
    min_notice_minutes: int
    horizon_days: int
    cancellation_window_minutes: int


class PractitionerOut(Out):
    id: UUID
    name: str
    specialty: str
    establishment_id: UUID
    timezone: str
    motives: list[MotiveOut]
    hours: list[HoursOut]
    absences: list[AbsenceOut]
    policy: PolicyOut


class PatientOut(Out):
    id: UUID
    first_name: str
    last_name: str
    birth_date: date
    sex: str
    email: str
    phone: str


class AppointmentOut(Out):
    id: UUID
    patient_id: UUID | None  # null when the caller may not see who the patient is
    practitioner_id: UUID
    establishment_id: UUID
    motive_id: str
    start: datetime
    end: datetime
    status: Literal["booked", "cancelled", "noshow", "fulfilled"]
    source: Literal["patient", "practitioner", "staff", "integration"]
    replaces: UUID | None = None
    replaced_by: UUID | None = None
    cancellation_reason: str | None = None


class SlotOut(Out):
    start: datetime
    end: datetime


class AvailabilityOut(Out):
    practitioner_id: UUID
    motive_id: str
    slots: list[SlotOut]


class AgendaEntryOut(Out):
    id: UUID
    start: datetime
    end: datetime
    motive_id: str
    motive_name: str | None
    patient_id: UUID | None  # null when the caller may not see who the patient is
    patient_name: str | None
    status: str
    source: str
    replaces: UUID | None = None
    replaced_by: UUID | None = None


class AgendaOut(Out):
    practitioner_id: UUID
    date: date
    appointments: list[AgendaEntryOut]


class EstablishmentList(Out):
    establishments: list[EstablishmentOut]


class PractitionerList(Out):
    practitioners: list[PractitionerOut]


class OfferOut(Out):
    practitioner_id: UUID
    name: str
    specialty: str
    establishment_id: UUID
    city: str | None
    motive_id: str
    slots: list[SlotOut]


class SearchOut(Out):
    offers: list[OfferOut]


class PatientAppointmentOut(Out):
    id: UUID
    practitioner_id: UUID
    practitioner_name: str | None
    specialty: str | None
    establishment_id: UUID
    establishment_name: str | None
    address: str | None
    city: str | None
    motive_id: str
    start: datetime
    end: datetime
    status: str
    replaces: UUID | None = None
    replaced_by: UUID | None = None


class PatientAppointmentsOut(Out):
    patient_id: UUID
    appointments: list[PatientAppointmentOut]


class TokenOut(Out):
    token: str  # the secret: shown this once, never stored (only its hash is)
    token_id: UUID
    actor_kind: str
    actor_id: UUID
    establishment_id: UUID | None = None
    replaces: UUID | None = None  # a rotation: the token it replaced, now revoked


class TokenInfoOut(Out):
    """A token as an admin sees it: never its secret nor its hash."""

    token_id: UUID
    display_name: str  # its label, or the practitioner's or establishment's name
    actor_kind: str
    actor_id: UUID
    establishment_id: UUID | None
    state: Literal["active", "revoked", "suspended"]
    reason: str  # why it was revoked or suspended; empty while active
    expires_at: datetime | None
    created: datetime
    # Its last request recorded in the access ledger, from the access index (a
    # read model, milliseconds behind); null if it has none.
    last_used_at: datetime | None


class TokenListOut(Out):
    tokens: list[TokenInfoOut]
    # The `after` of the next page; null on the last one.
    next: int | None = None


class Health(Out):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, str] = {}


class Problem(Out):
    """RFC 9457 problem details, with the offending field named."""

    type: str
    title: str
    status: int
    detail: str = ""
    field: str | None = None


class Created(Out):
    id: UUID


class ConsentOut(Out):
    patient_id: UUID
    establishment_id: UUID


class ErasureOut(Out):
    patient_id: UUID
    erased: bool
    already_erased: bool  # a repeat: the erasure was recorded before (this one finished it)
    cancelled_appointments: list[UUID]  # by this request: booked, not yet begun
    tokens_revoked: int


class TokenStateOut(Out):
    token_id: UUID
    state: Literal["active", "revoked", "suspended"]


class GrantOut(Out):
    practitioner_id: UUID
    integration_id: UUID
    scopes: list[str]


class GrantListOut(Out):
    grants: list[GrantOut]
    # The `after` of the next page; null on the last one.
    next: int | None = None


class AccessLogEntryOut(Out):
    at: datetime
    actor: str  # the practitioner, the establishment's desk, the software's name
    action: str
    resource_type: str
    outcome: str
    fields: list[str]
    # False when what the actor saw concerned you without naming you (a
    # practice software without the contact scope sees a masked agenda line)
    identified: bool


class AccessLogOut(Out):
    entries: list[AccessLogEntryOut]


class ExportQuery(Strict):
    format: Literal["json", "fhir"] = "json"  # fhir: a FHIR R4 Bundle (application/fhir+json)


class ExportPatientOut(Out):
    id: UUID
    first_name: str | None
    last_name: str | None
    birth_date: date | None
    sex: str | None
    email: str | None
    phone: str | None
    registered_at: datetime
    registered_by_establishment: UUID | None


class ContactChangeOut(Out):
    at: datetime
    email: str | None
    phone: str | None


class ExportAppointmentOut(PatientAppointmentOut):
    cancellation_reason: str | None = None  # as given when it was cancelled


class ExportOut(Out):
    """Everything Carnet holds about you (GDPR Art. 15 and 20)."""

    exported_at: datetime
    patient: ExportPatientOut
    appointments: list[ExportAppointmentOut]
    contact_history: list[ContactChangeOut]  # registration, then each change
    access_log: list[AccessLogEntryOut]


# One value, or several separated by commas (any of them matches); user agents
# hold commas, so `user_agent` and `not_user_agent` take one value each.
LedgerValues = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2000,
        pattern=ONE_LINE,
        description="one value, or several separated by commas (at most 50, each at most 64 "
        "characters)",
    ),
]
UserAgentIn = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=ONE_LINE)]


class LedgerQueryIn(Strict):
    actor_id: LedgerValues | None = None
    token_id: LedgerValues | None = None
    integration_id: LedgerValues | None = None
    client_ip: LedgerValues | None = None
    user_agent: UserAgentIn | None = None
    not_actor_id: LedgerValues | None = None
    not_token_id: LedgerValues | None = None
    not_integration_id: LedgerValues | None = None
    not_client_ip: LedgerValues | None = None
    not_user_agent: UserAgentIn | None = None
    patient_id: LedgerValues | None = None
    record_id: LedgerValues | None = None
    practitioner_id: LedgerValues | None = None
    establishment_id: LedgerValues | None = None
    outcome: LedgerValues | None = None
    action: LedgerValues | None = None
    resource_type: LedgerValues | None = None
    from_: datetime | None = msgspec.field(name="from", default=None)
    to: datetime | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] = 0  # the `next` of the previous page
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 500


class DisclosureOut(Out):
    record_id: str
    patient_id: str | None
    identified: bool
    practitioner_id: str | None
    establishment_id: str | None
    fields: list[str]


class LedgerEntryOut(Out):
    sequence: int
    actor_kind: str
    actor_id: str
    token_id: str | None
    integration_id: str | None
    action: str
    resource_type: str
    record_ids: list[str]
    patient_ids: list[str]
    fields: list[str]
    purpose: str
    outcome: str
    at: datetime
    request_id: str
    client_ip: str
    user_agent: str
    as_of: int
    on_behalf_of: str | None = None
    items: list[DisclosureOut] = []
    selectors: list[tuple[str, str]] = []
    replay: bool = False
    as_of_tx: int = 0


class LedgerOut(Out):
    entries: list[LedgerEntryOut]
    # The `after` of the next page; null on the last one.
    next: int | None = None
