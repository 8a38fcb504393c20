"""Which fields of which events are a person's data, and whose.

These fields are stored encrypted with a key of their data subject
(infra/keyring.py): erasing the person destroys the key, and the fields
read back as erased (None) ever after, in every replay. Everything else
(ids, times, statuses, practitioners) stays in clear, so that projections,
scoping and authorization keep working on it.

A new personal field is added here, in the same change as the event that
carries it; tests/unit/test_personal.py checks that every field named
exists on its event.
"""

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.agenda import Appointment
from domain.credentials import Token
from domain.directory import Patient

# event class -> its personal fields
# (The library makes an aggregate's event classes: `vars` finds them for mypy.)
_ISSUED: type = vars(Token)["Issued"]
PERSONAL: dict[type, tuple[str, ...]] = {
    vars(Patient)["Registered"]: ("first_name", "last_name", "birth_date", "sex", "email", "phone"),
    vars(Patient)["ContactDetailsChanged"]: ("email", "phone"),
    vars(Appointment)["Cancelled"]: ("reason",),
    # A token's label names its holder ("Dr Martin", "Alice Durand").
    _ISSUED: ("display_name",),
}


def personal_fields(event_cls: type) -> tuple[str, ...]:
    return PERSONAL.get(event_cls, ())


def data_subject(aggregate: Aggregate) -> UUID | None:
    """The person whose data an aggregate's events carry (None: nobody's)."""
    if isinstance(aggregate, Patient):
        return aggregate.id
    if isinstance(aggregate, Appointment):
        return aggregate.patient_id
    if isinstance(aggregate, Token):
        return aggregate.actor_id
    return None


def subject_of_event(event: Any) -> UUID | None:
    """The data subject an event names by itself, when it does (for writers
    that hold the event but not its aggregate)."""
    if isinstance(event, Patient.Event):
        return event.originator_id
    if isinstance(event, _ISSUED):
        actor_id: UUID = getattr(event, "actor_id")  # noqa: B009 - a library-made class
        return actor_id
    return None
