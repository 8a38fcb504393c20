"""GET /ledger as an analyst uses it in an incident: a practice software token
used from a second address alongside the legitimate one is told apart by
address and user agent; entries are found by outcome, action, resource type,
practitioner, establishment, patient, record, integration and time window;
pages follow a cursor; every bad filter is a 400 naming it."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from infra.http.keys import Services
from infra.ledger import read_chain
from tests.conftest import T0, FakeClock
from tests.e2e.ledger_support import more_actors
from tests.e2e.support import WEDNESDAY, booked, ok, paris, problem
from tests.world import World

LEGIT, EVIL = "MediAgenda/4.2 (Linux; x64)", "python-requests/2.31"


@dataclass
class Incident:
    appointment: str
    ghost: str  # an id the patient account tried: no such appointment
    token: str  # the practice software's token id
    integration: str
    legit: list[int]  # sequences of the legitimate software's agenda reads
    stolen: int  # the sequence of the attacker's agenda read


async def _last(pool: Any) -> int:
    return (await read_chain(pool))[-1].sequence


@pytest.fixture
async def incident(
    client: TestClient, world: World, services: Services, clock: FakeClock, pool: Any
) -> AsyncIterator[Incident]:
    await more_actors(services, world)
    appointment = (await booked(client, world, paris(WEDNESDAY, "09:00")))["id"]
    agenda = f"/practitioners/{world.practitioner}/agenda?date={WEDNESDAY}"
    reader = {**world.auth("reader"), "User-Agent": LEGIT}
    legit = []
    for _ in range(2):
        await ok(await client.get(agenda, headers=reader))
        legit.append(await _last(pool))
    # An hour later, the same token from another address (all of 127/8 is loopback).
    clock.advance(hours=1)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    head = str(await services.read.store.last_position())
    async with aiohttp.ClientSession(connector=connector) as attacker:
        answer = await attacker.get(
            client.make_url(agenda),
            headers={**world.auth("reader"), "User-Agent": EVIL, "Carnet-Min-Position": head},
        )
        assert answer.status == 200, await answer.text()
    stolen = await _last(pool)
    ghost = str(uuid.uuid4())
    await problem(await client.get(f"/appointments/{ghost}", headers=world.auth("patient")), 404)
    await ok(await client.get(f"/appointments/{appointment}", headers=world.auth("practitioner")))
    reader_actor = world.actors["reader"]
    yield Incident(
        appointment, ghost, str(reader_actor.token_id), str(reader_actor.id), legit, stolen
    )


async def search(client: TestClient, world: World, **params: str) -> list[dict[str, Any]]:
    body = await ok(await client.get("/ledger", params=params, headers=world.auth("analyst")))
    assert body["next"] is None
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def seqs(entries: list[dict[str, Any]]) -> list[int]:
    return [e["sequence"] for e in entries]


async def test_the_stolen_tokens_entries_are_told_apart_by_address_and_user_agent(
    client, world, incident
):
    everything = await search(client, world, token_id=incident.token)
    assert seqs(everything) == [*incident.legit, incident.stolen]

    not_usual = await search(client, world, token_id=incident.token, not_client_ip="127.0.0.1")
    by_agent = await search(client, world, token_id=incident.token, user_agent=EVIL)
    not_legit = await search(
        client, world, integration_id=incident.integration, not_user_agent=LEGIT
    )

    assert seqs(not_usual) == seqs(by_agent) == seqs(not_legit) == [incident.stolen]
    (entry,) = not_usual
    assert (entry["client_ip"], entry["user_agent"]) == ("127.0.0.2", EVIL)
    # What it disclosed, record by record, and what it asked for.
    (item,) = entry["items"]
    assert {k: v for k, v in item.items() if k != "fields"} == {
        "record_id": incident.appointment,
        "patient_id": str(world.patient),
        "identified": False,  # no contact scope: a masked line, about the patient
        "practitioner_id": str(world.practitioner),
        "establishment_id": str(world.establishment),
    }
    assert "start" in item["fields"] and not any(f.startswith("patient") for f in item["fields"])
    assert ["date", WEDNESDAY] in entry["selectors"]
    assert entry["replay"] is False and entry["as_of_tx"] > 0


async def test_entries_are_found_by_what_they_touched_how_they_ended_and_when(
    client, world, incident
):
    agenda_reads = [*incident.legit, incident.stolen]
    by_practitioner = await search(
        client, world, practitioner_id=str(world.practitioner), resource_type="agenda"
    )
    assert seqs(by_practitioner) == agenda_reads
    by_patient = await search(client, world, patient_id=str(world.patient))
    assert set(agenda_reads) < set(seqs(by_patient))
    by_establishment = await search(client, world, establishment_id=str(world.establishment))
    assert set(agenda_reads) < set(seqs(by_establishment))
    tried = await search(client, world, record_id=incident.ghost)
    assert [(e["outcome"], e["record_ids"]) for e in tried] == [("not-found", [incident.ghost])]
    assert seqs(await search(client, world, outcome="not-found,denied")) == seqs(tried)
    booking = await search(client, world, action="create", outcome="allowed")
    assert [(e["resource_type"], e["record_ids"]) for e in booking] == [
        ("appointment", [incident.appointment])
    ]
    # The window: only what happened from the attacker's read on.
    later = (T0 + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    window = await search(client, world, **{"from": later, "resource_type": "agenda,appointment"})
    assert seqs(window)[0] == incident.stolen
    early = await search(client, world, to=later, token_id=incident.token)
    assert seqs(early) == incident.legit


async def test_pages_follow_the_cursor_and_cover_every_entry_once(client, world, incident):
    everything = await search(client, world, limit="5000")
    seen: list[int] = []
    after, pages = "0", 0
    while True:
        body = await ok(
            await client.get(
                "/ledger", params={"limit": "2", "after": after}, headers=world.auth("analyst")
            )
        )
        seen += seqs(body["entries"])
        pages += 1
        if body["next"] is None:
            break
        assert body["next"] == body["entries"][-1]["sequence"]
        after = str(body["next"])
    # Each page's own search entry comes after the first full listing: the pages see them.
    assert seen[: len(everything)] == seqs(everything)
    assert len(seen) == len(set(seen)) and pages >= len(everything) // 2


async def test_the_search_is_itself_in_the_ledger_naming_what_it_showed(
    client, world, incident, pool
):
    shown = await search(client, world, token_id=incident.token)

    entry = (await read_chain(pool))[-1].record
    assert (entry.resource_type, entry.action, entry.outcome) == ("access-log", "search", "allowed")
    assert list(entry.record_ids) == [f"ledger:{s}" for s in seqs(shown)]
    assert ("token_id", incident.token) in entry.selectors


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"outcome": "stolen"}, "outcome"),
        ({"action": "read,peek"}, "action"),
        ({"token_id": "a,,b"}, "token_id"),
        ({"client_ip": "10.0.0.1,"}, "client_ip"),
        ({"record_id": ",".join(["x"] * 51)}, "record_id"),
        ({"patient_id": "p" * 65}, "patient_id"),
        ({"not_token_id": ""}, "not_token_id"),
        ({"user_agent": "u" * 201}, "user_agent"),
        ({"not_client_ip": "a\x00b"}, "not_client_ip"),
        ({"from": "2026-12-02T10:00:00Z", "to": "2026-12-02T09:00:00Z"}, "to"),
        ({"from": "2026-12-02T10:00:00"}, "from"),
        # msgspec's lax reading would take these as no filter, or as Unix times.
        ({"from": "null"}, "from"),
        ({"to": "null"}, "to"),
        ({"from": "1764642000"}, "from"),
        ({"to": "1.5"}, "to"),
        ({"from": "-1"}, "from"),
        ({"after": "-1"}, "after"),
        ({"after": "1e3"}, "after"),
        ({"limit": "5001"}, "limit"),
        ({"cursor": "3"}, "cursor"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(client, world, params, field):
    response = await client.get("/ledger", params=params, headers=world.auth("analyst"))

    await problem(response, 400, field)
