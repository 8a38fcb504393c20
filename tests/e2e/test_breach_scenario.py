"""Issue 8's incident, end to end. A seeded scenario (tests/scenario.py)
builds a world and weeks of traffic through HTTP; then software A's stolen
token walks every agenda it can reach from a new address while the real
software keeps syncing with it, and a patient account enumerates foreign
appointment ids until it is suspended. The scenario keeps its own ground
truth from the answers each of them received. The ledger must agree with
it, and `carnet scope` must find exactly it."""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from infra.http.app import create_app
from infra.http.keys import Services
from infra.workers import background
from services.actors import ActorKind
from tests.conftest import FakeClock
from tests.e2e.scenario_checks import (
    changed_since,
    entries_agree,
    notify_lists_agree,
    scope_matches,
    worth_scoping,
)
from tests.e2e.scenario_incident import ATTACKER_ADDRESS, ENUMERATOR_ADDRESS
from tests.e2e.scenario_net import Agent
from tests.e2e.support import WATCHFUL
from tests.scenario import USUAL_ADDRESS, Plan, run_scenario
from tests.world import META, ROOT

# CARNET_SCENARIO_SCALE=5 runs a bigger world and incident (minutes, not seconds).
PLAN = Plan(scale=float(os.environ.get("CARNET_SCENARIO_SCALE", "1")))


@pytest.fixture
async def server(services: Services, pool: Any) -> Any:
    # A real TCP port, so that the attacker's connections really come from
    # 127.0.0.2; the watchful throttle suspends the enumerating account.
    async with background(pool, None), TestServer(create_app(services, WATCHFUL)) as server:
        yield server


async def ledger(analyst: Agent, **filters: str) -> list[dict[str, Any]]:
    """Every entry `GET /ledger` finds with these filters, page by page."""
    entries: list[dict[str, Any]] = []
    after = "0"
    while True:
        params = {"limit": "500", "after": after, **filters}
        page = (await analyst.call("GET", "/ledger", params=params, expect=(200,))).body
        entries += page["entries"]
        if page["next"] is None:
            return entries
        after = str(page["next"])


async def carnet_scope(db_url: str, out: Path, *selectors: str) -> dict[str, Any]:
    """Run `carnet scope --out OUT SELECTORS` as an analyst would; its scope.json."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        "scope",
        "--out",
        str(out),
        *selectors,
        env={**os.environ, "CARNET_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, (stdout.decode(), stderr.decode())
    scope: dict[str, Any] = json.loads((out / "scope.json").read_text())
    return scope


async def test_carnet_scope_finds_exactly_what_the_stolen_token_and_the_enumerating_account_got(
    server: TestServer, services: Services, clock: FakeClock, db_url: str, tmp_path: Path
):
    admin = await services.credentials.issue_token(ROOT, META, ActorKind.ADMIN, label="scenario")
    outcome = await run_scenario(server.make_url(""), admin.secret, clock, PLAN)
    worth_scoping(outcome)
    attacker, legit, enumerator = outcome.attacker, outcome.legit, outcome.enumerator

    # First the scenario itself: the ledger, searched by an analyst, agrees
    # with what each of them received, and tells their addresses apart.
    net = outcome.cast.net
    try:
        issued = await outcome.cast.admin.post("/admin/tokens", {"actor_kind": "analyst"})
        analyst = net.agent("analyst", issued.body["token"], "curl/8.5.0", fresh=True)
        token = outcome.token_id
        away = await ledger(analyst, token_id=token, not_client_ip=USUAL_ADDRESS)
        entries_agree(away, attacker, outcome)
        entries_agree(
            await ledger(analyst, token_id=token, client_ip=USUAL_ADDRESS), legit, outcome
        )
        walk = await ledger(analyst, actor_id=outcome.account, client_ip=ENUMERATOR_ADDRESS)
        entries_agree(walk, enumerator, outcome)
    finally:
        await net.close()

    # "Token T, not from its usual address": the attacker, and only the attacker.
    folder = tmp_path / "token"
    scope = await carnet_scope(
        db_url, folder, "--token", outcome.token_id, "--not-client-ip", USUAL_ADDRESS
    )
    scope_matches(scope, attacker, outcome, ATTACKER_ADDRESS)
    only_legit = legit.records - attacker.records
    assert only_legit.isdisjoint(r["record_id"] for r in scope["records"])
    # The values are those of the moment of access, and today's differ for some.
    assert changed_since(attacker, outcome)
    notify_lists_agree(folder, attacker, outcome)

    # The enumerating account, from its first look-up from the new address on.
    since = enumerator.first.at.isoformat()
    scope = await carnet_scope(
        db_url, tmp_path / "account", "--actor", outcome.account, "--from", since
    )
    scope_matches(scope, enumerator, outcome, ENUMERATOR_ADDRESS)
