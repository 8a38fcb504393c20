"""The authorization policy: one pure function,
(actor, action, resource, the integration's scopes) -> allow with a field mask, or deny.

Object-level checks happen here and only here. Callers turn a refusal on
someone else's object into NotFound, never into 403, and blank the masked
fields before anything leaves.
"""

import enum
from dataclasses import dataclass
from uuid import UUID

from services.actors import Actor, ActorKind


class Action(enum.StrEnum):
    READ = "read"
    BOOK = "book"
    CANCEL = "cancel"
    RESCHEDULE = "reschedule"
    MARK = "mark"  # no-show / fulfilled: the practice's call
    MANAGE = "manage"  # change motives, hours, absences, contact details
    CREATE = "create"


class Kind(enum.StrEnum):
    ESTABLISHMENT = "establishment"
    PRACTITIONER = "practitioner"
    PATIENT = "patient"
    APPOINTMENT = "appointment"
    AGENDA = "agenda"
    AVAILABILITY = "availability"
    TOKEN = "token"
    ACCESS_LOG = "access-log"  # the access ledger, or a patient's view of it


@dataclass(frozen=True)
class Resource:
    kind: Kind
    patient_id: UUID | None = None
    practitioner_id: UUID | None = None
    establishment_id: UUID | None = None
    token_id: UUID | None = None
    # For BOOK: the patient is known at establishment_id (booked there before,
    # registered by its desk, or consented): see `_knows_the_patient`.
    patient_known: bool = False


# Public directory data: any authenticated actor may read it.
_PUBLIC = {Kind.ESTABLISHMENT, Kind.PRACTITIONER, Kind.AVAILABILITY}
_PATIENT_ACTIONS = {Action.READ, Action.BOOK, Action.CANCEL, Action.RESCHEDULE}


# What an integration without `patients:contact:read` must not see.
PATIENT_IDENTITY = frozenset({"patient_id", "patient_name", "email", "phone"})
NOTHING = frozenset[str]()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    hidden: frozenset[str] = NOTHING  # fields to blank in what is disclosed


DENY = Decision(False)


def decide(
    actor: Actor, action: Action, resource: Resource, scopes: frozenset[str] = NOTHING
) -> Decision:
    if actor.kind is ActorKind.ADMIN:
        return Decision(True)
    if action is Action.READ and resource.kind in _PUBLIC:
        return Decision(True)
    if resource.kind is Kind.TOKEN:
        # Anyone may revoke (cancel) their own token; issuing and lifting are an admin's.
        return Decision(action is Action.CANCEL and resource.token_id == actor.token_id)
    if resource.kind is Kind.ACCESS_LOG:
        # Analysts read the whole ledger; a patient reads the entries about them.
        return Decision(
            action is Action.READ
            and (
                actor.kind is ActorKind.ANALYST
                or (actor.kind is ActorKind.PATIENT and resource.patient_id == actor.id)
            )
        )
    if action is Action.BOOK and not _knows_the_patient(actor, resource):
        return DENY
    match actor.kind:
        case ActorKind.PATIENT:
            return Decision(_patient(actor, action, resource))
        case ActorKind.PRACTITIONER:
            return Decision(_practitioner(actor, action, resource))
        case ActorKind.STAFF:
            return Decision(_staff(actor, action, resource))
        case ActorKind.INTEGRATION:
            return _integration(action, resource, scopes)
    # Analysts and operators never touch bookings through these routes.
    return DENY


def allowed(
    actor: Actor, action: Action, resource: Resource, scopes: frozenset[str] = NOTHING
) -> bool:
    return decide(actor, action, resource, scopes).allowed


def _knows_the_patient(actor: Actor, r: Resource) -> bool:
    """A practice books only patients it already knows; a patient books only themself.

    Otherwise a practitioner, desk or granted software could book any patient
    id on its own agenda and read that patient's name there (book-to-reveal).
    """
    if actor.kind is ActorKind.PATIENT:
        return r.patient_id == actor.id
    return r.patient_known


def _integration(action: Action, r: Resource, scopes: frozenset[str]) -> Decision:
    """Third-party software acts only under a grant on that practitioner's agenda.

    `scopes` are those granted on r.practitioner_id; the caller looks them up.
    """
    if r.kind not in {Kind.APPOINTMENT, Kind.AGENDA}:
        return DENY
    needed = "agenda:read" if action is Action.READ else "appointments:write"
    if action not in {Action.READ, Action.BOOK, Action.CANCEL, Action.RESCHEDULE, Action.MARK}:
        return DENY
    if needed not in scopes:
        return DENY
    hidden = NOTHING if "patients:contact:read" in scopes else PATIENT_IDENTITY
    return Decision(True, hidden)


def _patient(actor: Actor, action: Action, r: Resource) -> bool:
    if r.kind is Kind.PATIENT:
        return r.patient_id == actor.id and action in {Action.READ, Action.MANAGE}
    if r.kind is Kind.APPOINTMENT:
        return r.patient_id == actor.id and action in _PATIENT_ACTIONS
    return False


def _practitioner(actor: Actor, action: Action, r: Resource) -> bool:
    if r.kind in {Kind.APPOINTMENT, Kind.AGENDA}:
        return r.practitioner_id == actor.id
    if r.kind is Kind.PRACTITIONER:
        return r.practitioner_id == actor.id and action is Action.MANAGE
    return False


def _staff(actor: Actor, action: Action, r: Resource) -> bool:
    same_place = actor.establishment_id is not None and r.establishment_id == actor.establishment_id
    if r.kind in {Kind.APPOINTMENT, Kind.AGENDA, Kind.PRACTITIONER}:
        return same_place
    if r.kind is Kind.PATIENT:
        # The desk registers walk-in patients, but cannot browse the patient base.
        return action is Action.CREATE
    return False
