"""Ground truth of a breach, from the answers its actor received, never from the ledger.

`Registry` is what the scenario's own agents learnt while building the world
through HTTP: whose each appointment is (a booking names its patient even
when the software that made it may not see them), which establishment each
practitioner works at, each patient's contact details. `truth_of` reads a
selection of the journal (tests/e2e/scenario_net.py) and says what an
analyst's scope of those requests must find: every record disclosed, with
the exact values of each answer and when and in which request it left;
which patients were identified and which only concerned (a masked agenda
line carries no patient id or name); the practitioners and establishments;
and the attempts (not found, refused) apart from the disclosures.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.e2e.scenario_net import Call

# A masked line hides exactly these (docs/api.md, "Who may call what").
PATIENT_FIELDS = ("patient_id", "patient_name")
# How the ledger names the end of a request, from what its sender saw. The
# 429 that suspends an enumerating token answers a look-up that had already
# been refused as not found; a suspended token's 401 is a denied attempt.
OUTCOME_OF_STATUS = {404: "not-found", 429: "not-found", 401: "denied", 403: "denied"}


@dataclass(frozen=True)
class Booking:
    patient_id: str
    practitioner_id: str
    establishment_id: str


@dataclass
class Registry:
    """The world as the scenario's own agents built it."""

    establishments: dict[str, str] = field(default_factory=dict)  # id -> city
    practitioners: dict[str, str] = field(default_factory=dict)  # id -> establishment
    appointments: dict[str, Booking] = field(default_factory=dict)
    contacts: dict[str, tuple[str, str]] = field(default_factory=dict)  # patient -> email, phone
    names: dict[str, str] = field(default_factory=dict)  # patient -> "First Last"

    def ordered(self, ids: Iterable[str]) -> list[str]:
        """These ids in the order the scenario created them.

        Ids are random (the server draws them), so sorting them would make a
        seeded run choose differently each time; creation order does not.
        """
        wanted = set(ids)
        known = [*self.establishments, *self.practitioners, *self.contacts, *self.appointments]
        found = [i for i in known if i in wanted]
        assert len(found) == len(wanted), wanted - set(found)
        return found


@dataclass(frozen=True)
class Access:
    """One record as it left in one answer."""

    record_id: str
    request_id: str
    at: datetime
    resource: str  # "agenda" or "appointment"
    values: dict[str, Any]  # exactly the fields the answer carried, as it carried them
    identified: bool


@dataclass(frozen=True)
class Attempt:
    """An id the actor asked for and did not get."""

    asked_for: str
    request_id: str
    at: datetime
    status: int
    outcome: str


@dataclass
class Truth:
    requests: list[Call] = field(default_factory=list)  # audited, in the order sent
    accesses: dict[str, list[Access]] = field(default_factory=dict)  # record -> accesses
    patients: set[str] = field(default_factory=set)  # concerned, identified or not
    identified: set[str] = field(default_factory=set)
    practitioners: set[str] = field(default_factory=set)
    establishments: set[str] = field(default_factory=set)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def records(self) -> set[str]:
        return set(self.accesses)

    @property
    def concerned_only(self) -> set[str]:
        return self.patients - self.identified

    @property
    def first(self) -> Call:
        return self.requests[0]

    def _seen(self, booking: Booking, access: Access) -> None:
        self.accesses.setdefault(access.record_id, []).append(access)
        self.patients.add(booking.patient_id)
        if access.identified:
            self.identified.add(booking.patient_id)
        self.practitioners.add(booking.practitioner_id)
        self.establishments.add(booking.establishment_id)


def _shown(line: dict[str, Any], masked_fields: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    """The values a line disclosed, and whether it identified its patient.

    Every appointment has a patient, so a null `patient_id` means masked.
    """
    masked = line["patient_id"] is None
    values = {k: v for k, v in line.items() if not (masked and k in masked_fields)}
    return values, not masked


def _disclosures(call: Call, registry: Registry) -> list[tuple[Booking, Access]]:
    parts = call.path.strip("/").split("/")
    masked_fields: tuple[str, ...]
    if parts[0] == "practitioners" and parts[2:] == ["agenda"]:
        resource, lines, masked_fields = "agenda", call.body["appointments"], PATIENT_FIELDS
    elif parts[0] == "appointments" and len(parts) == 2:
        resource, lines, masked_fields = "appointment", [call.body], ("patient_id",)
    else:
        raise AssertionError(f"the ground truth covers agenda and appointment reads: {call}")
    found = []
    for line in lines:
        values, identified = _shown(line, masked_fields)
        booking = registry.appointments[line["id"]]
        # The answer must agree with what the booking said.
        practitioner = parts[1] if resource == "agenda" else line["practitioner_id"]
        assert practitioner == booking.practitioner_id, (line, booking)
        if identified:
            assert line["patient_id"] == booking.patient_id, (line, booking)
        access = Access(line["id"], call.request_id, call.at, resource, values, identified)
        found.append((booking, access))
    return found


def _attempt(call: Call) -> Attempt | None:
    if call.status == 429 and "look-ups" not in str(call.body.get("detail")):
        return None  # a rate-limit 429 reached no handler and is not recorded
    outcome = OUTCOME_OF_STATUS.get(call.status)
    if outcome is None:
        return None
    asked_for = call.path.strip("/").split("/")[1]
    return Attempt(asked_for, call.request_id, call.at, call.status, outcome)


def truth_of(calls: list[Call], registry: Registry) -> Truth:
    """What these requests disclosed and tried, from their answers alone."""
    truth = Truth()
    for call in calls:
        if not call.audited:
            continue
        assert call.method == "GET", f"reads only: {call}"
        truth.requests.append(call)
        if call.status == 200:
            for booking, access in _disclosures(call, registry):
                truth._seen(booking, access)
        elif (attempt := _attempt(call)) is not None:
            truth.attempts.append(attempt)
        else:
            raise AssertionError(f"an answer the ground truth cannot read: {call}")
    return truth
