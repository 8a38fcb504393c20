from uuid import uuid4

import pytest

from services.actors import Actor, ActorKind
from services.policy import Action, Kind, Resource, allowed, decide

PATIENT, OTHER_PATIENT = uuid4(), uuid4()
DOCTOR, OTHER_DOCTOR = uuid4(), uuid4()
PLACE, OTHER_PLACE = uuid4(), uuid4()
APPOINTMENT = Resource(Kind.APPOINTMENT, PATIENT, DOCTOR, PLACE)


def actor(kind: ActorKind, id=None, place=None) -> Actor:
    return Actor(kind, id or uuid4(), place)


@pytest.mark.parametrize(
    ("who", "action", "expected"),
    [
        (actor(ActorKind.PATIENT, PATIENT), Action.READ, True),
        (actor(ActorKind.PATIENT, PATIENT), Action.CANCEL, True),
        (actor(ActorKind.PATIENT, PATIENT), Action.MARK, False),
        (actor(ActorKind.PATIENT, OTHER_PATIENT), Action.READ, False),
        (actor(ActorKind.PRACTITIONER, DOCTOR), Action.MARK, True),
        (actor(ActorKind.PRACTITIONER, OTHER_DOCTOR), Action.READ, False),
        (actor(ActorKind.STAFF, place=PLACE), Action.CANCEL, True),
        (actor(ActorKind.STAFF, place=OTHER_PLACE), Action.READ, False),
        (actor(ActorKind.INTEGRATION), Action.READ, False),
        (actor(ActorKind.ANALYST), Action.READ, False),
        (actor(ActorKind.OPERATOR), Action.READ, False),
        (actor(ActorKind.ADMIN), Action.MARK, True),
    ],
)
def test_who_may_do_what_to_an_appointment(who, action, expected):
    assert allowed(who, action, APPOINTMENT) is expected


def test_a_patient_sees_only_their_own_profile():
    me = actor(ActorKind.PATIENT, PATIENT)
    assert allowed(me, Action.READ, Resource(Kind.PATIENT, patient_id=PATIENT))
    assert not allowed(me, Action.READ, Resource(Kind.PATIENT, patient_id=OTHER_PATIENT))


def test_staff_register_patients_but_cannot_browse_them():
    desk = actor(ActorKind.STAFF, place=PLACE)
    assert allowed(desk, Action.CREATE, Resource(Kind.PATIENT))
    assert not allowed(desk, Action.READ, Resource(Kind.PATIENT, patient_id=PATIENT))


def test_agendas_are_visible_to_their_practitioner_and_establishment_only():
    agenda = Resource(Kind.AGENDA, practitioner_id=DOCTOR, establishment_id=PLACE)
    assert allowed(actor(ActorKind.PRACTITIONER, DOCTOR), Action.READ, agenda)
    assert allowed(actor(ActorKind.STAFF, place=PLACE), Action.READ, agenda)
    assert not allowed(actor(ActorKind.PRACTITIONER, OTHER_DOCTOR), Action.READ, agenda)
    assert not allowed(actor(ActorKind.STAFF, place=OTHER_PLACE), Action.READ, agenda)
    assert not allowed(actor(ActorKind.PATIENT, PATIENT), Action.READ, agenda)


def test_directory_and_availability_are_public_to_any_authenticated_actor():
    for kind in ActorKind:
        assert allowed(actor(kind), Action.READ, Resource(Kind.AVAILABILITY))
        assert allowed(actor(kind), Action.READ, Resource(Kind.PRACTITIONER))


def test_an_integration_needs_a_grant_and_sees_no_identity_without_contact_scope():
    software = actor(ActorKind.INTEGRATION)
    assert not allowed(software, Action.READ, APPOINTMENT)
    reading = decide(software, Action.READ, APPOINTMENT, frozenset({"agenda:read"}))
    assert reading.allowed and {"patient_id", "patient_name"} <= reading.hidden
    full = decide(
        software, Action.READ, APPOINTMENT, frozenset({"agenda:read", "patients:contact:read"})
    )
    assert full.allowed and full.hidden == frozenset()
    assert not allowed(software, Action.BOOK, APPOINTMENT, frozenset({"agenda:read"}))
    known = Resource(Kind.APPOINTMENT, PATIENT, DOCTOR, PLACE, patient_known=True)
    assert allowed(software, Action.BOOK, known, frozenset({"appointments:write"}))
    assert not allowed(
        software,
        Action.READ,
        Resource(Kind.PATIENT, patient_id=PATIENT),
        frozenset({"agenda:read", "patients:contact:read"}),
    )


def test_anyone_may_revoke_their_own_token_but_only_an_admin_issues_or_lifts():
    token = uuid4()
    me = Actor(ActorKind.PATIENT, PATIENT, token_id=token)
    assert allowed(me, Action.CANCEL, Resource(Kind.TOKEN, token_id=token))
    assert not allowed(me, Action.CANCEL, Resource(Kind.TOKEN, token_id=uuid4()))
    assert not allowed(me, Action.MANAGE, Resource(Kind.TOKEN, token_id=token))
    assert not allowed(me, Action.CREATE, Resource(Kind.TOKEN))
    assert allowed(actor(ActorKind.ADMIN), Action.MANAGE, Resource(Kind.TOKEN, token_id=token))


def test_the_ledger_is_read_by_analysts_and_each_patient_reads_their_own_entries():
    assert allowed(actor(ActorKind.ANALYST), Action.READ, Resource(Kind.ACCESS_LOG))
    assert not allowed(actor(ActorKind.OPERATOR), Action.READ, Resource(Kind.ACCESS_LOG))
    me = actor(ActorKind.PATIENT, PATIENT)
    assert allowed(me, Action.READ, Resource(Kind.ACCESS_LOG, patient_id=PATIENT))
    assert not allowed(me, Action.READ, Resource(Kind.ACCESS_LOG, patient_id=OTHER_PATIENT))


@pytest.mark.parametrize(
    ("who", "scopes"),
    [
        (actor(ActorKind.PRACTITIONER, DOCTOR), frozenset()),
        (actor(ActorKind.STAFF, place=PLACE), frozenset()),
        (actor(ActorKind.INTEGRATION), frozenset({"appointments:write"})),
    ],
    ids=["practitioner", "staff", "integration"],
)
def test_the_practice_books_only_a_patient_it_already_knows(who, scopes):
    # Book-to-reveal: booking a stranger would put their name on the agenda.
    stranger = Resource(Kind.APPOINTMENT, OTHER_PATIENT, DOCTOR, PLACE)
    known = Resource(Kind.APPOINTMENT, OTHER_PATIENT, DOCTOR, PLACE, patient_known=True)
    assert not allowed(who, Action.BOOK, stranger, scopes)
    assert allowed(who, Action.BOOK, known, scopes)
    # Knowing the patient opens nothing else: the agenda must still be theirs.
    elsewhere = Resource(
        Kind.APPOINTMENT, OTHER_PATIENT, OTHER_DOCTOR, OTHER_PLACE, patient_known=True
    )
    assert not allowed(who, Action.BOOK, elsewhere, frozenset())


def test_a_patient_books_for_themself_whether_known_or_not_and_never_for_another():
    me = actor(ActorKind.PATIENT, PATIENT)
    assert allowed(me, Action.BOOK, APPOINTMENT)
    mine_known = Resource(Kind.APPOINTMENT, PATIENT, DOCTOR, PLACE, patient_known=True)
    assert allowed(me, Action.BOOK, mine_known)
    theirs = Resource(Kind.APPOINTMENT, OTHER_PATIENT, DOCTOR, PLACE, patient_known=True)
    assert not allowed(me, Action.BOOK, theirs)


def test_knowing_the_patient_matters_only_for_booking():
    # Reading, cancelling or marking an existing appointment is already scoped
    # to the agenda; the appointment itself proves the relationship.
    for action in (Action.READ, Action.CANCEL, Action.RESCHEDULE, Action.MARK):
        assert allowed(actor(ActorKind.PRACTITIONER, DOCTOR), action, APPOINTMENT)
        assert allowed(actor(ActorKind.STAFF, place=PLACE), action, APPOINTMENT)
