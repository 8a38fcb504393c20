"""Scoping a breach end to end: a small incident made through HTTP
(tests/e2e/scope_incident.py), then `POST /analyst/scopes` and
`carnet scope` over it. After the incident Alice changed her email and
Bob's appointment was cancelled: the scope must tell what they were when
the attacker saw them.
"""

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from domain.ledger import LEDGER_ID
from infra.cli import _parser
from infra.commands import scope as scope_command
from infra.http import scope_routes
from infra.http.keys import Services
from infra.keyring import opened
from infra.ledger import read_chain
from services.scoping import Limits
from tests.conftest import T0, FakeClock
from tests.e2e.scope_incident import (
    ATTACKER_IP,
    EVIL_NAME,
    Incident,
    make_incident,
    settle,
)
from tests.e2e.support import ok, problem
from tests.world import World


@pytest.fixture
async def incident(
    client: TestClient, world: World, services: Services, clock: FakeClock
) -> Incident:
    return await make_incident(client, world, services, clock)


async def scope_over_http(client: TestClient, world: World, **selector: Any) -> Any:
    await settle(client.services)  # type: ignore[attr-defined]
    answer = await client.post("/analyst/scopes", json=selector, headers=world.auth("analyst"))
    return await ok(answer)


async def carnet_scope(pool: Any, *argv: str) -> int:
    args = _parser().parse_args(["scope", *argv])
    return await scope_command.run(pool, args)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_the_api_scopes_what_the_stolen_token_saw_from_its_new_address(
    client: TestClient, world: World, incident: Incident, pool: Any
):
    found = await scope_over_http(
        client, world, token_ids=[incident.token_id], not_client_ips=["127.0.0.1"]
    )

    records = {r["record_id"]: r for r in found["records"]}
    assert set(records) == {incident.alice_ap, incident.bob_ap, incident.carl_ap}
    assert {a["client_ip"] for r in found["records"] for a in r["accesses"]} == {ATTACKER_IP}
    # The values as the attacker got them, not as they are now.
    bob_line = records[incident.bob_ap]["accesses"][0]["values"]
    assert (bob_line["status"], bob_line["patient_name"]) == ("booked", "Bob Test")
    alice = records[incident.alice_ap]
    assert [a["resource_type"] for a in alice["accesses"]] == ["agenda", "appointment"]
    assert alice["accesses"][1]["values"]["patient_id"] == str(world.patient)
    carl_line = records[incident.carl_ap]
    assert not carl_line["identified"] and "patient_name" not in carl_line["accesses"][0]["values"]

    people = {p["patient_id"]: p for p in found["patients"]}
    assert {p for p, v in people.items() if v["identified"]} == {
        str(world.patient),
        str(world.other_patient),
    }
    assert not people[incident.carl]["identified"]
    assert people[str(world.patient)]["contact"]["email"] == "alice@example.org"
    places = {e["establishment_id"]: e for e in found["establishments"]}
    assert places[str(world.establishment)]["patients_identified"] == sorted(
        [str(world.patient), str(world.other_patient)]
    )
    assert places[str(world.other_establishment)]["patients_concerned_only"] == [incident.carl]

    assert sorted(a["record_ids"][0] for a in found["attempts"]["not_found"]) == sorted(
        incident.missing
    )
    assert "no contact details read" in found["categories"]["statements"]
    assert "nothing modified" in found["categories"]["statements"]
    start = found["anomaly"]["start"]
    assert datetime.fromisoformat(start["at"]) == incident.attack_began
    assert {d["reason"] for d in start["reasons"]} >= {"address", "user-agent"}
    assert found["anomaly"]["baseline"]["client_ips"] == ["127.0.0.1"]
    assert found["chain"]["state"] == "intact"
    assert found["window"]["reaches_before_log"]  # no start: the whole ledger

    # The scope itself is in the ledger: the analyst exported those patients' data.
    last = (await read_chain(pool))[-1].record
    assert (last.resource_type, last.action, last.actor_kind) == ("scope", "export", "analyst")
    assert {str(world.patient), str(world.other_patient), incident.carl} <= set(last.patient_ids)


async def test_the_cli_writes_the_artifacts_with_the_contacts_of_then_and_escapes_hostile_text(
    client: TestClient, world: World, incident: Incident, pool: Any, tmp_path: Path
):
    since = _iso(incident.attack_began - timedelta(minutes=10))
    status = await carnet_scope(
        pool,
        "--out",
        str(tmp_path),
        "--token",
        incident.token_id,
        "--from",
        since,
        "--awareness",
        "now",
    )
    assert status == 0

    found = json.loads((tmp_path / "scope.json").read_text())
    assert {r["record_id"] for r in found["records"]} == {
        incident.alice_ap,
        incident.bob_ap,
        incident.carl_ap,
    }
    assert found["anomaly"]["rule"] == "before-window"
    assert datetime.fromisoformat(found["anomaly"]["start"]["at"]) == incident.attack_began
    assert not found["window"]["reaches_before_log"]

    first = list(
        csv.DictReader(io.StringIO((tmp_path / f"notify-{world.establishment}.csv").read_text()))
    )
    assert {(r["patient_id"], r["email"]) for r in first} == {
        (str(world.patient), "alice@example.org"),  # not her new address
        (str(world.other_patient), "bob@example.org"),
    }
    (carl,) = csv.DictReader(
        io.StringIO((tmp_path / f"notify-{world.other_establishment}.csv").read_text())
    )
    assert carl["identified"].startswith("no")
    # Formula injection: every cell a spreadsheet would evaluate starts with an apostrophe.
    assert carl["first_name"] == "'" + EVIL_NAME
    assert carl["last_name"] == "'@Walk-In"
    assert carl["phone"] == "'+33 6 44 44 44 44"

    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "Content-Security-Policy" in html and "<svg" in html
    md = (tmp_path / "report.md").read_text()
    assert r"\<script\>" in md and "<script>" not in md
    for said in ("3 records", "no contact details read", "nothing modified", "Anomaly start"):
        assert said in md, said
    assert "Notify the supervisory authority by" in md
    assert (tmp_path / "timeline.svg").read_text().startswith("<svg")

    # Handing the artifacts over is itself recorded.
    last = (await read_chain(pool))[-1].record
    assert (last.resource_type, last.action, last.actor_id) == ("scope", "export", "cli")


async def test_a_tampered_ledger_makes_the_report_say_so(
    client: TestClient, world: World, incident: Incident, pool: Any, tmp_path: Path
):
    # Someone hides the attacker: its first entry now claims the usual address.
    chain = await read_chain(pool)
    first = next(e.version for e in chain if opened(e.record).client_ip == ATTACKER_IP)
    # (The address is sealed: the forger writes the usual one in its place.)
    await pool.execute(
        "UPDATE carnet.events SET state = convert_to(jsonb_set(convert_from(state, 'UTF8')::jsonb,"
        " '{record,client_ip}', '\"127.0.0.1\"')::text, 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = $2",
        LEDGER_ID,
        first,
    )
    found = await scope_over_http(client, world, token_ids=[incident.token_id])
    assert found["chain"]["state"] == "tampered"
    assert found["chain"]["finding"] == {
        "kind": "altered",
        "sequence": first,
        "detail": "its record does not match its hash",
    }
    assert found["chain"]["affects_scope"]

    status = await carnet_scope(pool, "--out", str(tmp_path), "--token", incident.token_id)
    assert status == 1
    md = (tmp_path / "report.md").read_text()
    assert f"WARNING: the access ledger has been tampered with: entry {first} is altered" in md
    assert "tampered" in (tmp_path / "report.html").read_text()


async def test_a_window_that_starts_before_the_ledger_is_flagged(
    client: TestClient, world: World, incident: Incident, pool: Any, tmp_path: Path
):
    early = await scope_over_http(
        client, world, token_ids=[incident.token_id], **{"from": _iso(T0 - timedelta(days=1))}
    )
    assert early["window"]["reaches_before_log"]
    assert datetime.fromisoformat(early["window"]["log_start"]) >= T0
    inside = await scope_over_http(
        client, world, token_ids=[incident.token_id], **{"from": _iso(incident.attack_began)}
    )
    assert not inside["window"]["reaches_before_log"]

    since = _iso(T0 - timedelta(days=1))
    assert (
        await carnet_scope(
            pool, "--out", str(tmp_path), "--token", incident.token_id, "--from", since
        )
        == 0
    )
    assert "The window reaches before the ledger" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "selector"),
        ({"token_ids": ["a\u0000b"]}, 400, "token_ids[0]"),
        ({"user_agents": ["x" * 201]}, 400, "user_agents[0]"),
        ({"token_ids": ["x"] * 21}, 400, "token_ids"),
        ({"tokens": ["x"]}, 400, "tokens"),
        ({"token_ids": ["x"], "from": "2026-12-01T08:00:00"}, 400, "from"),
        (
            {"token_ids": ["x"], "from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
            422,
            "to",
        ),
    ],
)
async def test_a_bad_selector_is_refused_naming_the_field(
    client: TestClient, world: World, body: dict[str, Any], status: int, field: str
):
    answer = await client.post("/analyst/scopes", json=body, headers=world.auth("analyst"))
    await problem(answer, status, field)


async def test_only_analysts_and_admins_scope(client: TestClient, world: World):
    selector = {"actor_ids": [str(world.patient)]}
    for who in ("patient", "practitioner", "integration", "operator"):
        if who not in world.tokens:
            continue
        answer = await client.post("/analyst/scopes", json=selector, headers=world.auth(who))
        await problem(answer, 403)
    await ok(await client.post("/analyst/scopes", json=selector, headers=world.auth("admin")))


async def test_a_scope_too_large_for_the_api_points_at_the_cli(
    client: TestClient, world: World, incident: Incident, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(scope_routes, "ROUTE_LIMITS", Limits(max_entries=3))
    await settle(client.services)  # type: ignore[attr-defined]
    answer = await client.post(
        "/analyst/scopes", json={"token_ids": [incident.token_id]}, headers=world.auth("analyst")
    )
    body = await problem(answer, 422, "selector")
    assert body["type"].endswith("/scope-too-large") and "carnet scope" in body["detail"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--token", "t", "--from", "yesterday"],
        ["--token", "t", "--from", "2026-12-01T08:00:00"],
        ["--token", "a\x01b"],
        ["--token", "t"],  # no --out
        ["--token", "t", "--awareness", "soon"],
    ],
)
def test_the_cli_refuses_bad_input_with_status_2(argv: list[str], tmp_path: Path):
    out = [] if argv == ["--token", "t"] else ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["scope", *out, *argv])
    assert exited.value.code == 2
