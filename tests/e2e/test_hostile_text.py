"""Hostile text at the edge: NUL, controls and odd Unicode in every text field.

One NUL in a cancel reason once froze every agenda (PostgreSQL text cannot
hold it). Every text field of every command and query is now checked where it
enters: 400 problem+json naming the field, nothing appended, and the read
models keep running.
"""

from typing import Any

import pytest
from yarl import URL

from infra.projection_status import statuses
from tests.e2e.support import WALK_IN, WEDNESDAY, booked, log_position, paris, problem

NINE = paris(WEDNESDAY, "09:00")
HOSTILE = {
    "nul": "x\u0000y",
    "bell": "x\u0007",
    "escape": "\u001b[31mred",
    "c1 control": "x\u0085y",
    "delete": "x\u007f",
}


def _patient(**changes: str) -> dict[str, Any]:
    return {**WALK_IN, **changes}


def _establishment(**changes: str) -> dict[str, Any]:
    return {"name": "Cabinet C", "address": "3 rue C", "city": "Nantes", **changes}


def _practitioner(world: Any, **changes: Any) -> dict[str, Any]:
    body = {"name": "Dr Three", "specialty": "cardiology", "establishment_id": "{establishment}"}
    return {**body, **changes}


# (who, method, path, body, field): one per text field a client can send.
BODIES = [
    ("admin", "POST", "/establishments", lambda v: _establishment(name=v), "name"),
    ("admin", "POST", "/establishments", lambda v: _establishment(address=v), "address"),
    ("admin", "POST", "/establishments", lambda v: _establishment(city=v), "city"),
    ("admin", "POST", "/establishments", lambda v: _establishment(timezone=v), "timezone"),
    ("admin", "POST", "/patients", lambda v: _patient(first_name=v), "first_name"),
    ("admin", "POST", "/patients", lambda v: _patient(last_name=v), "last_name"),
    ("admin", "POST", "/patients", lambda v: _patient(email=v), "email"),
    ("admin", "POST", "/patients", lambda v: _patient(phone=v), "phone"),
    ("admin", "POST", "/practitioners", lambda v: _practitioner(None, name=v), "name"),
    ("admin", "POST", "/practitioners", lambda v: _practitioner(None, specialty=v), "specialty"),
    (
        "admin",
        "POST",
        "/practitioners",
        lambda v: _practitioner(
            None, motives=[{"id": "m", "name": v, "duration_minutes": 20, "online": True}]
        ),
        "motives[0].name",
    ),
    (
        "practitioner",
        "POST",
        "/practitioners/{practitioner}/motives",
        lambda v: {"id": "m2", "name": v, "duration_minutes": 20},
        "name",
    ),
    (
        "practitioner",
        "POST",
        "/practitioners/{practitioner}/absences",
        lambda v: {"start": NINE, "end": paris(WEDNESDAY, "10:00"), "reason": v},
        "reason",
    ),
    (
        "patient",
        "PUT",
        "/patients/{patient}/contact",
        lambda v: {"email": v, "phone": "+33 6"},
        "email",
    ),
    (
        "patient",
        "PUT",
        "/patients/{patient}/contact",
        lambda v: {"email": "a@b.c", "phone": v},
        "phone",
    ),
    ("admin", "POST", "/admin/tokens", lambda v: {"actor_kind": "analyst", "label": v}, "label"),
    ("patient", "POST", "/appointments/{appointment}/cancel", lambda v: {"reason": v}, "reason"),
]


def _fill(text: str, world: Any, appointment: str) -> str:
    return (
        text.replace("{practitioner}", str(world.practitioner))
        .replace("{patient}", str(world.patient))
        .replace("{establishment}", str(world.establishment))
        .replace("{appointment}", appointment)
    )


def _filled(value: Any, world: Any, appointment: str) -> Any:
    if isinstance(value, str):
        return _fill(value, world, appointment)
    if isinstance(value, dict):
        return {k: _filled(v, world, appointment) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, world, appointment) for v in value]
    return value


async def _all_running(services: Any) -> None:
    found = await statuses(services.read.pool)
    assert found and all(s.state == "running" for s in found), found


@pytest.mark.parametrize("bad", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize(
    ("who", "method", "path", "body", "field"),
    BODIES,
    ids=[f"{c[1]} {c[2]} {c[4]}" for c in BODIES],
)
async def test_a_control_character_in_any_text_field_is_refused_naming_it(
    client, world, services, who, method, path, body, field, bad
):
    appointment = await booked(client, world, NINE)
    before = await log_position(services)

    response = await client.request(
        method,
        _fill(path, world, appointment["id"]),
        json=_filled(body(bad), world, appointment["id"]),
        headers=world.auth(who),
    )

    await problem(response, 400, field)
    assert await log_position(services) == before
    await _all_running(services)


QUERIES = [
    ("/establishments", {"city": "{bad}"}, "city"),
    ("/practitioners", {"city": "{bad}"}, "city"),
    ("/practitioners", {"specialty": "{bad}"}, "specialty"),
    ("/availability", {"from": WEDNESDAY, "to": WEDNESDAY, "city": "{bad}"}, "city"),
    ("/availability", {"from": WEDNESDAY, "to": WEDNESDAY, "specialty": "{bad}"}, "specialty"),
    ("/ledger", {"actor_id": "{bad}"}, "actor_id"),
    ("/ledger", {"token_id": "{bad}"}, "token_id"),
    ("/ledger", {"patient_id": "{bad}"}, "patient_id"),
    ("/ledger", {"record_id": "{bad}"}, "record_id"),
]
QUERY_IDS = [f"{path} {field}" for path, _, field in QUERIES]


@pytest.mark.parametrize("bad", ["\u0000", "a\u0000", "\u0001", "\u009f"])
@pytest.mark.parametrize(("path", "params", "field"), QUERIES, ids=QUERY_IDS)
async def test_a_control_character_in_a_query_parameter_is_refused(
    client, world, services, path, params, field, bad
):
    filled = {k: v.replace("{bad}", bad) for k, v in params.items()}
    who = "analyst" if path == "/ledger" else "patient"

    response = await client.get(path, params=filled, headers=world.auth(who))

    await problem(response, 400, field)
    await _all_running(services)


@pytest.mark.parametrize("escape", ["%FF", "%ED%A0%80", "%C0%80", "a%E9b"])
@pytest.mark.parametrize(("path", "params", "field"), QUERIES, ids=QUERY_IDS)
async def test_a_query_escape_that_is_not_utf8_is_refused_naming_the_parameter(
    client, world, path, params, field, escape
):
    query = "&".join(f"{k}={v.replace('{bad}', escape)}" for k, v in params.items())
    who = "analyst" if path == "/ledger" else "patient"
    url = URL(str(client.make_url(path)) + "?" + query, encoded=True)

    response = await client.session.get(url, headers=world.auth(who))

    await problem(response, 400, field)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "1e3"}, "limit"),
        ({"limit": "٣"}, "limit"),
        ({"limit": " 3"}, "limit"),
        ({"limit": "+3"}, "limit"),
        ({"limit": "3.0"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"min_position": "٣"}, "min_position"),
        ({"min_position": ""}, "min_position"),
        ({"min_position": " 1"}, "min_position"),
    ],
)
async def test_a_number_that_is_not_plain_ascii_digits_is_refused(client, world, params, field):
    if field == "min_position":  # read models take it; past the client's own header
        response = await client.session.get(
            client.make_url("/establishments"), params=params, headers=world.auth("patient")
        )
    else:
        response = await client.get("/ledger", params=params, headers=world.auth("analyst"))

    await problem(response, 400, field)


@pytest.mark.parametrize("value", ["", "٣", "1e3", "0x10"])
async def test_a_min_position_header_that_is_not_digits_is_refused(client, world, value):
    response = await client.get(
        "/establishments", headers={**world.auth("patient"), "Carnet-Min-Position": value}
    )

    await problem(response, 400, "Carnet-Min-Position")


async def test_text_is_stored_in_nfc_and_printable_unicode_is_kept(client, world, services):
    decomposed = "Zoe\u0308 \U0001f600 \u202etxt \u4e2d"  # e + combining diaeresis, emoji, RLO
    response = await client.post(
        "/patients", json=_patient(first_name=decomposed), headers=world.auth("admin")
    )
    assert response.status == 201, await response.text()
    patient = (await response.json())["id"]

    read = await client.get(f"/patients/{patient}", headers=world.auth("admin"))

    assert (await read.json())["first_name"] == "Zo\u00eb \U0001f600 \u202etxt \u4e2d"
    await _all_running(services)


async def test_a_cancel_reason_may_span_lines(client, world, services):
    appointment = await booked(client, world, NINE)

    response = await client.post(
        f"/appointments/{appointment['id']}/cancel",
        json={"reason": "line one\nline two\twith a tab"},
        headers=world.auth("patient"),
    )

    assert response.status == 200, await response.text()
    assert (await response.json())["cancellation_reason"] == "line one\nline two\twith a tab"
    await _all_running(services)
