"""The authorization matrix: every actor kind, by every audited route, by own,
foreign and missing objects, with the status it must get and the outcome the
access ledger must record for that very call.

"Own" is the object the actor's role reaches at the first practice (Alice's
appointment with Dr One, Alice herself, Dr One's agenda); "foreign" is the
same kind of object at the second practice (Bob, Dr Two); "missing" is an id
that exists nowhere. For routes that name an object in their path, foreign
and missing must answer byte for byte alike whenever neither is allowed.
"""

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from infra.http.keys import Services
from infra.http.routes import ROUTES
from services.actors import ActorKind
from tests.conftest import FakeClock
from tests.e2e.ledger_support import (
    OUTCOME_OF_STATUS,
    LedgerWatch,
    more_actors,
    settled,
    slots,
)
from tests.e2e.support import WALK_IN, WEDNESDAY
from tests.world import META, ROOT, World

ACTORS = (
    "admin",
    "patient",
    "practitioner",
    "staff",
    "integration",
    "reader",
    "analyst",
    "operator",
)
OBJECTS = ("own", "foreign", "missing")
NOTHING = (404, 404, 404)

Cells = dict[str, tuple[int, ...]]


def cells(default: tuple[int, ...], **overrides: tuple[int, ...]) -> Cells:
    table = {actor: default for actor in ACTORS}
    table.update(overrides)
    return table


# "reader" is an integration granted agenda:read on Dr One; "integration" has no grant.
_READ_APPOINTMENT = cells(
    NOTHING,
    admin=(200, 200, 404),
    patient=(200, 404, 404),
    practitioner=(200, 404, 404),
    staff=(200, 404, 404),
    reader=(200, 404, 404),
)
# Changing needs appointments:write: the reader sees the appointment, so it is
# told no (403, denied) rather than that it does not exist.
_CHANGE = cells(
    NOTHING,
    admin=(200, 200, 404),
    patient=(200, 404, 404),
    practitioner=(200, 404, 404),
    staff=(200, 404, 404),
    reader=(403, 404, 404),
)
_MARK = {**_CHANGE, "patient": (403, 404, 404)}  # the practice's call, not the patient's
_PATIENT = cells(NOTHING, admin=(200, 200, 404), patient=(200, 404, 404))
_FORBIDDEN = (403,)
_GRANTOR = cells(
    NOTHING,
    admin=(200, 200, 404),
    practitioner=(200, 404, 404),
    staff=(200, 404, 404),
)

MATRIX: dict[tuple[str, str], Cells] = {
    ("GET", "/appointments/{appointment_id}"): _READ_APPOINTMENT,
    ("POST", "/appointments/{appointment_id}/cancel"): _CHANGE,
    ("POST", "/appointments/{appointment_id}/reschedule"): {
        k: tuple(201 if s == 200 else s for s in v) for k, v in _CHANGE.items()
    },
    ("POST", "/appointments/{appointment_id}/noshow"): _MARK,
    ("POST", "/appointments/{appointment_id}/fulfilled"): _MARK,
    ("GET", "/patients/{patient_id}"): _PATIENT,
    ("PUT", "/patients/{patient_id}/contact"): _PATIENT,
    ("POST", "/patients/{patient_id}/consents"): _PATIENT,
    ("POST", "/patients/{patient_id}/erasure"): _PATIENT,
    # Only a patient's own token: no object to name, nobody else's to reach.
    ("GET", "/me/export"): cells(_FORBIDDEN, patient=(200,)),
    # An admin listing an unknown patient's appointments gets an empty list.
    ("GET", "/patients/{patient_id}/appointments"): {**_PATIENT, "admin": (200, 200, 200)},
    ("GET", "/practitioners/{practitioner_id}/agenda"): cells(
        NOTHING,
        admin=(200, 200, 404),
        practitioner=(200, 404, 404),
        staff=(200, 404, 404),
        reader=(200, 404, 404),
    ),
    # Own: Dr One's agenda; foreign: Dr Two's; missing: no such practitioner.
    # Patients may book with anyone; the practice only on its own agenda.
    ("POST", "/appointments"): cells(
        NOTHING,
        admin=(201, 201, 404),
        patient=(201, 201, 404),
        practitioner=(201, 404, 404),
        staff=(201, 404, 404),
    ),
    ("POST", "/patients"): cells(_FORBIDDEN, admin=(201,), staff=(201,)),
    ("GET", "/me/access-log"): cells(_FORBIDDEN, patient=(200,)),
    ("GET", "/ledger"): cells(_FORBIDDEN, admin=(200,), analyst=(200,)),
    ("POST", "/analyst/scopes"): cells(_FORBIDDEN, admin=(200,), analyst=(200,)),
    # Tokens: "own" is the caller's own token, "foreign" another patient's.
    # Anyone revokes their own token; the rest is an admin's (403 for others).
    ("POST", "/admin/tokens"): cells(_FORBIDDEN, admin=(201,)),
    ("GET", "/admin/tokens"): cells(_FORBIDDEN, admin=(200,)),
    ("POST", "/tokens/{token_id}/revoke"): cells((200, 404, 404), admin=(200, 200, 404)),
    # Own and foreign are suspended tokens here: only a suspended one can be lifted.
    ("POST", "/admin/tokens/{token_id}/lift-suspension"): cells(
        (403, 403, 403), admin=(200, 200, 404)
    ),
    ("POST", "/admin/tokens/{token_id}/rotate"): cells((403, 403, 403), admin=(201, 201, 404)),
    # Grants on Dr One's agenda (own) and Dr Two's (foreign): the practitioner,
    # their desk and an admin; to anyone else the agenda does not exist.
    ("PUT", "/practitioners/{practitioner_id}/grants/{integration_id}"): _GRANTOR,
    ("DELETE", "/practitioners/{practitioner_id}/grants/{integration_id}"): _GRANTOR,
    ("GET", "/practitioners/{practitioner_id}/grants"): _GRANTOR,
    ("GET", "/admin/grants"): cells(_FORBIDDEN, admin=(200,)),
}
# Calls that change the caller's own token go last: afterwards it may no longer work.
OWN_TOKEN_LAST = frozenset(
    {
        ("POST", "/tokens/{token_id}/revoke"),
        ("POST", "/admin/tokens/{token_id}/rotate"),
        ("POST", "/patients/{patient_id}/erasure"),  # revokes the patient's own token
    }
)
# Routes that change several records in several writes, each with its own entry
# (an erasure: the patient, then each token revoked): the first one is checked.
ONE_ENTRY_A_WRITE = frozenset({("POST", "/patients/{patient_id}/erasure")})


class Board:
    """Makes the objects each cell acts on: fresh ones where the call changes them."""

    def __init__(self, world: World, services: Services) -> None:
        self.world = world
        self.services = services
        self.free: dict[Any, Iterator[str]] = {
            world.practitioner: slots(day=3),  # Friday on
            world.other_practitioner: slots(day=3),
        }
        self.wednesday: dict[Any, Iterator[str]] = {
            world.practitioner: slots(day=1),
            world.other_practitioner: slots(day=1),
        }

    async def appointment(self, obj: str, day: str = "later") -> str:
        if obj == "missing":
            return str(uuid.uuid4())
        own = obj == "own"
        practitioner = self.world.practitioner if own else self.world.other_practitioner
        patient = self.world.patient if own else self.world.other_patient
        source = self.free if day == "later" else self.wednesday
        booked = await self.services.booking.book(
            ROOT,
            META,
            practitioner_id=practitioner,
            motive_id="consultation",
            start=datetime.fromisoformat(next(source[practitioner])),
            patient_id=patient,
        )
        return str(booked.appointment.id)

    def patient(self, obj: str) -> str:
        return {
            "own": str(self.world.patient),
            "foreign": str(self.world.other_patient),
            "missing": str(uuid.uuid4()),
        }[obj]

    def practitioner(self, obj: str) -> str:
        return {
            "own": str(self.world.practitioner),
            "foreign": str(self.world.other_practitioner),
            "missing": str(uuid.uuid4()),
        }[obj]

    async def token(self, obj: str, actor: str, suspended: bool = False) -> str:
        """The caller's own token, a fresh one of another patient's, or none."""
        if obj == "missing":
            return str(uuid.uuid4())
        if obj == "own" and not suspended:
            return str(self.world.actors[actor].token_id)
        issued = await self.services.credentials.issue_token(
            ROOT, META, ActorKind.PATIENT, self.world.other_patient, label="matrix"
        )
        assert issued.actor.token_id is not None
        if suspended:
            await self.services.credentials.suspend_token(META, issued.actor.token_id, "matrix")
        return str(issued.actor.token_id)

    async def grant(self, practitioner: str) -> None:
        """A grant to the ungranted integration, so that there is one to withdraw."""
        if practitioner in (str(self.world.practitioner), str(self.world.other_practitioner)):
            await self.services.credentials.grant(
                ROOT,
                META,
                uuid.UUID(practitioner),
                self.world.actors["integration"].id,
                ("agenda:read",),
            )

    def slot(self, practitioner: str) -> str:
        known = {str(k): v for k, v in self.free.items()}
        return next(known.get(practitioner, self.free[self.world.practitioner]))


async def request_for(
    board: Board, route: tuple[str, str], obj: str, actor: str = "admin"
) -> tuple[str, dict[str, Any], str | None]:
    """(path, request kwargs, the id the path asks for) for one cell."""
    _, template = route
    kwargs: dict[str, Any] = {}
    if "{token_id}" in template:
        target = await board.token(obj, actor, suspended=template.endswith("/lift-suspension"))
        if template.endswith("/revoke"):
            kwargs["json"] = {"reason": "matrix"}
        return template.replace("{token_id}", target), kwargs, target
    if "/grants" in template and template.startswith("/practitioners/"):
        target = board.practitioner(obj)
        software = str(board.world.actors["integration"].id)
        await board.grant(target)
        path = template.replace("{practitioner_id}", target)
        path = path.replace("{integration_id}", software)
        if route[0] == "PUT":
            kwargs["json"] = {"scopes": ["agenda:read"]}
        # Write routes name two ids (practitioner and integration): asked for is both.
        return path, kwargs, target if route[0] == "GET" else None
    if route == ("POST", "/admin/tokens"):
        return template, {"json": {"actor_kind": "analyst", "label": "matrix"}}, None
    if template.startswith("/appointments/{"):
        suffix = template.removeprefix("/appointments/{appointment_id}")
        day = "wednesday" if suffix in ("/noshow", "/fulfilled") else "later"
        target = await board.appointment(obj, day)
        if suffix == "/cancel":
            kwargs["json"] = {"reason": "matrix"}
        elif suffix == "/reschedule":
            owner = board.world.practitioner if obj != "foreign" else board.world.other_practitioner
            kwargs["json"] = {"start": board.slot(str(owner))}
        return f"/appointments/{target}{suffix}", kwargs, target
    if template.startswith("/patients/{"):
        target = board.patient(obj)
        kwargs = {}
        if template.endswith("/contact"):
            kwargs["json"] = {"email": f"{obj}@example.org", "phone": "+33 6 55 55 55 55"}
        elif template.endswith("/consents"):
            kwargs["json"] = {"establishment_id": str(board.world.other_establishment)}
        return template.replace("{patient_id}", target), kwargs, target
    if template == "/practitioners/{practitioner_id}/agenda":
        target = board.practitioner(obj)
        return (
            template.replace("{practitioner_id}", target),
            {"params": {"date": WEDNESDAY}},
            target,
        )
    if route == ("POST", "/appointments"):
        practitioner = board.practitioner(obj)
        body = {
            "practitioner_id": practitioner,
            "motive_id": "consultation",
            "start": board.slot(practitioner),
            "patient_id": str(board.world.patient),
        }
        return template, {"json": body}, None
    if route == ("POST", "/patients"):
        return template, {"json": WALK_IN}, None
    if route == ("POST", "/analyst/scopes"):
        # Everything the patient's token touched: what a stolen-token scope asks.
        token = str(board.world.actors["patient"].token_id)
        return template, {"json": {"token_ids": [token]}}, None
    return template, {"params": {"limit": "5"}} if template == "/ledger" else {}, None


def test_the_matrix_covers_every_audited_route_and_every_actor():
    assert set(MATRIX) == {(r.method, r.path) for r in ROUTES if r.audit is not None}
    for route, table in MATRIX.items():
        assert set(table) == set(ACTORS), route


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
async def test_each_actor_gets_the_expected_status_and_the_ledger_the_expected_outcome(
    route: tuple[str, str],
    client: TestClient,
    world: World,
    services: Services,
    clock: FakeClock,
    pool: Any,
):
    await more_actors(services, world)
    board = Board(world, services)
    table = MATRIX[route]
    objects = OBJECTS if len(table["admin"]) == 3 else ("none",)
    object_route = "{" in route[1]

    # Prepare every cell first: marking needs appointments that have started.
    planned = []
    for actor in ACTORS:
        for obj in objects:
            planned.append((actor, obj, *(await request_for(board, route, obj, actor))))
    if route in OWN_TOKEN_LAST:
        planned.sort(key=lambda cell: cell[1] == "own")
    if route in ONE_ENTRY_A_WRITE:
        # The patient erases themselves before the admin erases them again (then
        # told it was done): the other way round, their token would be gone.
        planned.sort(key=lambda cell: (cell[1] == "own", cell[0] == "admin"))
    if route[1].endswith(("/noshow", "/fulfilled")):
        clock.advance(days=2)  # Thursday 08:00: every Wednesday appointment has started

    watch = LedgerWatch(pool)
    await watch.mark()
    got: dict[tuple[str, str], tuple[int, bytes]] = {}
    wrong: list[tuple[object, ...]] = []
    for actor, obj, path, kwargs, asked in planned:
        answer = await client.request(route[0], path, headers=world.auth(actor), **kwargs)
        body = await answer.read()
        got[(actor, obj)] = (answer.status, body)
        expected = table[actor][objects.index(obj)]
        entries = settled(await watch.new())
        who = world.actors[actor]
        outcome = OUTCOME_OF_STATUS.get(answer.status, "?")
        if answer.status != expected:
            wrong.append((actor, obj, "status", expected, answer.status, body[:200]))
        elif len(entries) != 1 and not (route in ONE_ENTRY_A_WRITE and entries):
            wrong.append((actor, obj, "entries", 1, len(entries), entries))
        else:
            record = entries[0].record
            seen = (record.outcome, record.actor_id, record.token_id, record.resource_type)
            want = (outcome, str(who.id), str(who.token_id), route_audit(route).resource)
            if seen != want:
                wrong.append((actor, obj, "ledger", want, seen, None))
            if outcome != "allowed" and asked is not None and record.record_ids != (asked,):
                wrong.append((actor, obj, "asked for", (asked,), record.record_ids, None))
    assert not wrong, "\n".join(map(repr, wrong))

    if object_route:
        for actor in ACTORS:
            if table[actor][1] == table[actor][2] == 404:
                assert got[(actor, "foreign")] == got[(actor, "missing")], actor


def route_audit(route: tuple[str, str]) -> Any:
    return next(r.audit for r in ROUTES if (r.method, r.path) == route)


async def test_a_refused_booking_for_another_patient_names_that_patient_in_the_ledger(
    client: TestClient, world: World, pool: Any
):
    watch = LedgerWatch(pool)
    await watch.mark()
    answer = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": next(slots(day=1)),
            "patient_id": str(world.other_patient),
        },
        headers=world.auth("patient"),
    )
    assert answer.status == 404
    (entry,) = settled(await watch.new())
    assert entry.record.outcome == "not-found"
    # Whose data was tried is named, so the ledger can answer "who tried Bob's data?".
    assert entry.record.patient_ids == (str(world.other_patient),)
