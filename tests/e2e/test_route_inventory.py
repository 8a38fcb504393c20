"""The route inventory: every route that returns or changes personal data is
audited, and every audited route, called for real, leaves a ledger entry that
names the records it touched. A new route that skips either fails here."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec.inspect as mi
import pytest
from aiohttp.test_utils import TestClient

from domain.credentials import Grant
from domain.ledger import Entry
from infra.http import schemas as s
from infra.http.app import create_app
from infra.http.audit import Audit
from infra.http.keys import Services
from infra.http.routes import ROUTES, Route
from tests.conftest import FakeClock
from tests.e2e.ledger_support import LedgerWatch, settled, slots
from tests.e2e.support import WEDNESDAY
from tests.world import META, ROOT, World

PERSONAL = frozenset(
    {
        "patient_id",
        "patient_name",
        "first_name",
        "last_name",
        "birth_date",
        "email",
        "phone",
        "patient_ids",
    }
)
OBJECT_PARAMS = ("{patient_id}", "{appointment_id}")
PERSONAL_COLLECTIONS = ("/appointments", "/patients")
# Served by the app but not in the route table: neither carries personal data.
OUTSIDE_THE_TABLE = {("GET", "/openapi.json"), ("GET", "/metrics")}


def personal_fields(schema: type | None) -> set[str]:
    """The personal-data field names anywhere inside a msgspec schema."""
    found: set[str] = set()
    seen: set[type] = set()

    def walk(info: mi.Type) -> None:
        if isinstance(info, mi.StructType):
            if info.cls in seen:
                return
            seen.add(info.cls)
            for f in info.fields:
                if f.name in PERSONAL or f.encode_name in PERSONAL:
                    found.add(f.name)
                walk(f.type)
        elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            walk(info.item_type)
        elif isinstance(info, mi.TupleType):
            for item in info.item_types:
                walk(item)
        elif isinstance(info, mi.DictType):
            walk(info.key_type)
            walk(info.value_type)
        elif isinstance(info, mi.UnionType):
            for member in info.types:
                walk(member)
        elif isinstance(info, mi.Metadata):
            walk(info.type)

    if schema is not None:
        walk(mi.type_info(schema))
    return found


def why_personal(route: Route) -> list[str]:
    """The reasons a route touches personal data (empty: it does not)."""
    reasons = []
    if fields := personal_fields(route.response):
        reasons.append(f"its response exposes {sorted(fields)}")
    if fields := personal_fields(route.body):
        reasons.append(f"its body carries {sorted(fields)}")
    if any(p in route.path for p in OBJECT_PARAMS):
        reasons.append("its path names a patient or an appointment")
    if route.method != "GET" and route.path.startswith(PERSONAL_COLLECTIONS):
        reasons.append("it changes appointments or patients")
    return reasons


def wired(services: Services) -> dict[tuple[str, str], Audit | None]:
    """Every (method, path) the app really serves, with the audit its handler carries."""
    app = create_app(services)
    found = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found[(route.method, route.resource.canonical)] = getattr(
            route.handler, "carnet_audit", None
        )
    return found


# -- (a) every route that touches personal data is audited --------------------


def test_the_classifier_would_catch_a_new_unaudited_route_exposing_a_patient():
    async def handler(request: Any) -> Any:
        raise NotImplementedError

    sneaky = Route("GET", "/reports/no-shows", handler, "x", "x", list[s.AppointmentOut])
    assert why_personal(sneaky) == ["its response exposes ['patient_id']"]
    nested = Route("GET", "/x", handler, "x", "x", s.AgendaOut)
    assert personal_fields(nested.response) == {"patient_id", "patient_name"}
    directory = Route("GET", "/x", handler, "x", "x", s.PractitionerList)
    assert why_personal(directory) == []


def test_every_route_that_touches_personal_data_is_audited():
    unaudited = {
        f"{r.method} {r.path}": why_personal(r)
        for r in ROUTES
        if why_personal(r) and r.audit is None
    }
    assert unaudited == {}


async def test_every_served_route_is_in_the_table_and_carries_the_tables_audit(
    services: Services,
):
    table = {(r.method, r.path): r.audit for r in ROUTES}
    served = wired(services)
    assert set(served) - set(table) == OUTSIDE_THE_TABLE
    assert set(table) <= set(served)
    assert {key: served[key] for key in table} == table


def test_an_audits_ids_are_parameters_of_its_path():
    for route in ROUTES:
        if route.audit is not None:
            for name in route.audit.ids:
                assert "{" + name + "}" in route.path, (route.path, name)


# -- (b) every audited route, called, leaves an entry naming its records ------


@dataclass
class Expect:
    who: str
    resource: str
    action: str
    record_ids: set[str]
    patient_ids: set[str]
    status: int = 200
    discloses: bool = True
    entries: int = 1  # an erasure: one a write (the patient, each token), each naming its own


@dataclass
class Scene:
    client: TestClient
    world: World
    services: Services
    clock: FakeClock
    watch: LedgerWatch
    free: Any = field(default_factory=lambda: slots(day=3))  # Friday on
    entries: list[Entry] = field(default_factory=list)
    response: Any = None
    request_id: str = ""

    async def book(self, patient: Any = None, practitioner: Any = None, start: str = "") -> str:
        booked = await self.services.booking.book(
            ROOT,
            META,
            practitioner_id=practitioner or self.world.practitioner,
            motive_id="consultation",
            start=datetime.fromisoformat(start or next(self.free)),
            patient_id=patient or self.world.patient,
        )
        return str(booked.appointment.id)

    async def call(self, method: str, path: str, who: str, status: int, **kwargs: Any) -> Any:
        await self.watch.mark()
        answer = await self.client.request(method, path, headers=self.world.auth(who), **kwargs)
        body = await answer.json(content_type=None)
        assert answer.status == status, body
        self.entries = settled(await self.watch.new())
        self.request_id = answer.headers["X-Request-Id"]
        self.response = body
        return body


Example = Callable[[Scene], Awaitable[Expect]]
EXAMPLES: dict[tuple[str, str], Example] = {}


def example(method: str, path: str) -> Callable[[Example], Example]:
    def register(fn: Example) -> Example:
        EXAMPLES[(method, path)] = fn
        return fn

    return register


@example("GET", "/me/access-log")
async def _access_log(sc: Scene) -> Expect:
    alice = str(sc.world.patient)
    await sc.call("GET", f"/patients/{alice}", "admin", 200)
    # The access log is fed by the ledger and takes no Carnet-Min-Position.
    read = sc.services.read
    await read.wait_for(await read.store.last_position(), ["access_log"])
    body = await sc.call("GET", "/me/access-log", "patient", 200)
    assert body["entries"], body
    return Expect("patient", "access-log", "read", {alice}, {alice})


@example("GET", "/me/export")
async def _export(sc: Scene) -> Expect:
    alice = str(sc.world.patient)
    body = await sc.call("GET", "/me/export", "patient", 200)
    assert body["patient"]["id"] == alice and body["patient"]["first_name"] == "Alice"
    return Expect("patient", "patient", "export", {alice}, {alice})


@example("GET", "/ledger")
async def _ledger(sc: Scene) -> Expect:
    await sc.call("GET", f"/patients/{sc.world.patient}", "admin", 200)
    await sc.call("GET", f"/patients/{sc.world.other_patient}", "admin", 200)
    body = await sc.call("GET", "/ledger", "analyst", 200, params={"limit": "50"})
    shown = body["entries"]
    assert len(shown) == 2
    return Expect(
        "analyst",
        "access-log",
        "search",
        {f"ledger:{e['sequence']}" for e in shown},
        {str(sc.world.patient), str(sc.world.other_patient)},
    )


@example("GET", "/patients/{patient_id}/appointments")
async def _patient_appointments(sc: Scene) -> Expect:
    alice = str(sc.world.patient)
    mine = {await sc.book(), await sc.book()}
    await sc.book(patient=sc.world.other_patient)
    body = await sc.call("GET", f"/patients/{alice}/appointments", "patient", 200)
    assert {a["id"] for a in body["appointments"]} == mine
    return Expect("patient", "appointment", "search", mine, {alice})


@example("GET", "/practitioners/{practitioner_id}/agenda")
async def _agenda(sc: Scene) -> Expect:
    day = iter(slots(day=1))
    alices = await sc.book(start=next(day))
    bobs = await sc.book(patient=sc.world.other_patient, start=next(day))
    await sc.book(practitioner=sc.world.other_practitioner, start=next(day))
    path = f"/practitioners/{sc.world.practitioner}/agenda"
    body = await sc.call("GET", path, "practitioner", 200, params={"date": WEDNESDAY})
    assert {a["id"] for a in body["appointments"]} == {alices, bobs}
    return Expect(
        "practitioner",
        "agenda",
        "read",
        {alices, bobs},
        {str(sc.world.patient), str(sc.world.other_patient)},
    )


@example("POST", "/patients")
async def _register_patient(sc: Scene) -> Expect:
    body = await sc.call(
        "POST",
        "/patients",
        "staff",
        201,
        json={
            "first_name": "Carol",
            "last_name": "Walk-In",
            "birth_date": "1990-05-05",
            "sex": "female",
            "email": "carol@example.org",
            "phone": "+33 6 22 22 22 22",
        },
    )
    return Expect("staff", "patient", "create", {body["id"]}, {body["id"]}, 201)


@example("GET", "/patients/{patient_id}")
async def _patient(sc: Scene) -> Expect:
    alice = str(sc.world.patient)
    body = await sc.call("GET", f"/patients/{alice}", "patient", 200)
    assert body["first_name"] == "Alice"
    return Expect("patient", "patient", "read", {alice}, {alice})


@example("PUT", "/patients/{patient_id}/contact")
async def _contact(sc: Scene) -> Expect:
    alice = str(sc.world.patient)
    new = {"email": "alice@new.example.org", "phone": "+33 6 33 33 33 33"}
    body = await sc.call("PUT", f"/patients/{alice}/contact", "patient", 200, json=new)
    assert body["email"] == new["email"]
    return Expect("patient", "patient", "change", {alice}, {alice})


@example("POST", "/patients/{patient_id}/consents")
async def _consent(sc: Scene) -> Expect:
    bob = str(sc.world.other_patient)
    there = {"establishment_id": str(sc.world.establishment)}
    body = await sc.call("POST", f"/patients/{bob}/consents", "other_patient", 200, json=there)
    assert body == {"patient_id": bob, "establishment_id": there["establishment_id"]}
    return Expect("other_patient", "patient", "change", {bob}, {bob})


@example("POST", "/patients/{patient_id}/erasure")
async def _erasure(sc: Scene) -> Expect:
    bob = str(sc.world.other_patient)
    body = await sc.call("POST", f"/patients/{bob}/erasure", "admin", 200)
    assert body["erased"] is True and body["patient_id"] == bob
    # Two writes, two entries: Patient.Erased, and the revocation of Bob's one token.
    return Expect("admin", "patient", "delete", {bob}, {bob}, entries=2, discloses=False)


@example("POST", "/appointments")
async def _book(sc: Scene) -> Expect:
    body = await sc.call(
        "POST",
        "/appointments",
        "patient",
        201,
        json={
            "practitioner_id": str(sc.world.practitioner),
            "motive_id": "consultation",
            "start": next(sc.free),
        },
    )
    return Expect("patient", "appointment", "create", {body["id"]}, {str(sc.world.patient)}, 201)


@example("GET", "/appointments/{appointment_id}")
async def _appointment(sc: Scene) -> Expect:
    made = await sc.book()
    body = await sc.call("GET", f"/appointments/{made}", "practitioner", 200)
    assert body["patient_id"] == str(sc.world.patient)
    return Expect("practitioner", "appointment", "read", {made}, {str(sc.world.patient)})


@example("POST", "/appointments/{appointment_id}/cancel")
async def _cancel(sc: Scene) -> Expect:
    made = await sc.book()
    body = await sc.call(
        "POST", f"/appointments/{made}/cancel", "patient", 200, json={"reason": "ill"}
    )
    assert body["status"] == "cancelled"
    return Expect("patient", "appointment", "change", {made}, {str(sc.world.patient)})


@example("POST", "/appointments/{appointment_id}/reschedule")
async def _reschedule(sc: Scene) -> Expect:
    made = await sc.book()
    body = await sc.call(
        "POST",
        f"/appointments/{made}/reschedule",
        "patient",
        201,
        json={"start": next(sc.free)},
    )
    assert body["replaces"] == made
    # Both the replaced appointment and its replacement were changed.
    return Expect(
        "patient", "appointment", "change", {made, body["id"]}, {str(sc.world.patient)}, 201
    )


async def _mark(sc: Scene, outcome: str, who: str) -> Expect:
    made = await sc.book(start=next(iter(slots(day=1))))  # Wednesday 09:00 Paris
    sc.clock.advance(days=1, hours=2)  # Wednesday 10:00: it has started
    body = await sc.call("POST", f"/appointments/{made}/{outcome}", who, 200)
    assert body["status"] == outcome
    return Expect(who, "appointment", "change", {made}, {str(sc.world.patient)})


@example("POST", "/appointments/{appointment_id}/noshow")
async def _noshow(sc: Scene) -> Expect:
    return await _mark(sc, "noshow", "practitioner")


@example("POST", "/appointments/{appointment_id}/fulfilled")
async def _fulfilled(sc: Scene) -> Expect:
    return await _mark(sc, "fulfilled", "staff")


@example("POST", "/analyst/scopes")
async def _scope(sc: Scene) -> Expect:
    made = await sc.book()
    await sc.call("GET", f"/appointments/{made}", "practitioner", 200)
    practitioner = str(sc.world.actors["practitioner"].id)
    body = await sc.call(
        "POST", "/analyst/scopes", "analyst", 200, json={"actor_ids": [practitioner]}
    )
    assert [r["record_id"] for r in body["records"]] == [made]
    alice = str(sc.world.patient)
    # The scope hands over the appointment's values and Alice's contact details.
    return Expect("analyst", "scope", "export", {made, alice}, {alice})


# -- tokens and grants: no patient data, still recorded -----------------------


@example("POST", "/admin/tokens")
async def _issue_token(sc: Scene) -> Expect:
    body = await sc.call(
        "POST", "/admin/tokens", "admin", 201, json={"actor_kind": "analyst", "label": "audit"}
    )
    assert body["token"] not in str(sc.entries)
    return Expect("admin", "token", "create", {body["token_id"]}, set(), 201)


@example("GET", "/admin/tokens")
async def _list_tokens(sc: Scene) -> Expect:
    body = await sc.call("GET", "/admin/tokens", "admin", 200, params={"actor_kind": "staff"})
    shown = {t["token_id"] for t in body["tokens"]}
    assert shown == {str(sc.world.actors[w].token_id) for w in ("staff", "other_staff")}
    return Expect("admin", "token", "search", shown, set())


@example("POST", "/tokens/{token_id}/revoke")
async def _revoke_token(sc: Scene) -> Expect:
    mine = str(sc.world.actors["analyst"].token_id)
    await sc.call("POST", f"/tokens/{mine}/revoke", "analyst", 200, json={"reason": "done"})
    return Expect("analyst", "token", "change", {mine}, set())


@example("POST", "/admin/tokens/{token_id}/lift-suspension")
async def _lift(sc: Scene) -> Expect:
    patient = sc.world.actors["patient"]
    assert patient.token_id is not None
    await sc.services.credentials.suspend_token(META, patient.token_id, "enumeration suspected")
    await sc.call("POST", f"/admin/tokens/{patient.token_id}/lift-suspension", "admin", 200)
    return Expect("admin", "token", "change", {str(patient.token_id)}, set())


@example("POST", "/admin/tokens/{token_id}/rotate")
async def _rotate(sc: Scene) -> Expect:
    old = str(sc.world.actors["analyst"].token_id)
    body = await sc.call("POST", f"/admin/tokens/{old}/rotate", "admin", 201)
    return Expect("admin", "token", "change", {old, body["token_id"]}, set(), 201)


def _grant_id(sc: Scene, practitioner: Any = None) -> str:
    software = sc.world.actors["integration"].id
    return str(Grant.create_id(practitioner or sc.world.practitioner, software))


async def _give(sc: Scene, practitioner: Any = None) -> None:
    await sc.services.credentials.grant(
        ROOT,
        META,
        practitioner or sc.world.practitioner,
        sc.world.actors["integration"].id,
        ("agenda:read",),
    )


@example("PUT", "/practitioners/{practitioner_id}/grants/{integration_id}")
async def _grant(sc: Scene) -> Expect:
    software = sc.world.actors["integration"].id
    path = f"/practitioners/{sc.world.practitioner}/grants/{software}"
    await sc.call("PUT", path, "practitioner", 200, json={"scopes": ["agenda:read"]})
    return Expect("practitioner", "grant", "change", {_grant_id(sc)}, set())


@example("DELETE", "/practitioners/{practitioner_id}/grants/{integration_id}")
async def _withdraw(sc: Scene) -> Expect:
    await _give(sc)
    software = sc.world.actors["integration"].id
    body = await sc.call(
        "DELETE", f"/practitioners/{sc.world.practitioner}/grants/{software}", "staff", 200
    )
    assert body["scopes"] == []
    return Expect("staff", "grant", "delete", {_grant_id(sc)}, set())


@example("GET", "/admin/grants")
async def _list_grants(sc: Scene) -> Expect:
    await _give(sc)
    await _give(sc, sc.world.other_practitioner)
    body = await sc.call("GET", "/admin/grants", "admin", 200)
    assert len(body["grants"]) == 2
    return Expect(
        "admin",
        "grant",
        "search",
        {_grant_id(sc), _grant_id(sc, sc.world.other_practitioner)},
        set(),
    )


@example("GET", "/practitioners/{practitioner_id}/grants")
async def _practitioner_grants(sc: Scene) -> Expect:
    await _give(sc)
    await _give(sc, sc.world.other_practitioner)
    body = await sc.call(
        "GET", f"/practitioners/{sc.world.practitioner}/grants", "practitioner", 200
    )
    assert len(body["grants"]) == 1
    return Expect("practitioner", "grant", "search", {_grant_id(sc)}, set())


async def test_the_examples_cover_exactly_the_audited_routes(services: Services):
    audited = {key for key, audit in wired(services).items() if audit is not None}
    assert audited == {(r.method, r.path) for r in ROUTES if r.audit is not None}
    assert set(EXAMPLES) == audited


@pytest.mark.parametrize("route", sorted(EXAMPLES), ids=lambda r: f"{r[0]} {r[1]}")
async def test_an_audited_route_leaves_one_entry_naming_the_records_it_touched(
    route: tuple[str, str],
    client: TestClient,
    world: World,
    services: Services,
    clock: FakeClock,
    pool: Any,
):
    scene = Scene(client, world, services, clock, LedgerWatch(pool))
    expect = await EXAMPLES[route](scene)

    assert len(scene.entries) == expect.entries, scene.entries
    record = scene.entries[0].record.reflecting(scene.entries[0].sequence)
    actor = world.actors[expect.who]
    assert (record.actor_kind, record.actor_id, record.token_id) == (
        actor.kind.value,
        str(actor.id),
        str(actor.token_id),
    )
    assert (record.resource_type, record.action, record.outcome) == (
        expect.resource,
        expect.action,
        "allowed",
    )
    assert set(record.record_ids) == expect.record_ids
    assert set(record.patient_ids) == expect.patient_ids
    assert record.request_id == scene.request_id
    if expect.discloses:
        assert record.fields, record
        assert 0 < record.as_of <= await services.read.store.last_position()
    if route == ("GET", "/ledger"):
        # The ledger is read straight from its chain: as of its last entry shown.
        assert record.as_of == max(e["sequence"] for e in scene.response["entries"])
