"""The small incident tests/e2e/test_scope.py scopes, made through HTTP.

A practice software's token (an integration granted the first
practitioner's agenda with contact details, the second one's without)
syncs one agenda every hour from the usual address; then someone else uses
the same token from 127.0.0.2 with a hostile user agent, reads both
agendas, one appointment, and tries two ids that do not exist. Afterwards
Alice changes her email and Bob's appointment is cancelled.
"""

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from domain.values import Sex
from infra import access_index
from infra.http.keys import Services
from infra.http.wire import MIN_POSITION_HEADER
from tests.conftest import FakeClock
from tests.e2e.support import THURSDAY, WEDNESDAY, ok, paris
from tests.world import META, ROOT, World

SOFTWARE_UA = "PracticeSoft/3.2"
HOSTILE_UA = 'Mozilla/5.0 <script>alert("x")</script><img src=x onerror=alert(1)> =1+1'
ATTACKER_IP = "127.0.0.2"
EVIL_NAME = '=HYPERLINK("http://evil.example","click")'


@dataclass
class Incident:
    token_id: str
    alice_ap: str
    bob_ap: str
    carl_ap: str
    carl: str
    attack_began: datetime
    missing: tuple[str, str]


async def settle(services: Services) -> None:
    """Let the agenda and the access index reach the log's head: on a busy machine the
    server's own wait for them (a few seconds) may not be enough."""
    head = await services.read.store.last_position()
    await services.read.wait_for(head, ["agenda", access_index.INDEX], within=60)


async def _book(services: Services, practitioner: Any, start: str, patient: Any) -> str:
    booked = await services.booking.book(
        ROOT,
        META,
        practitioner_id=practitioner,
        motive_id="consultation",
        start=datetime.fromisoformat(start),
        patient_id=patient,
    )
    return str(booked.appointment.id)


async def make_incident(
    client: TestClient, world: World, services: Services, clock: FakeClock
) -> Incident:
    software = world.actors["integration"]
    await services.credentials.grant(
        ROOT, META, world.practitioner, software.id, ("agenda:read", "patients:contact:read")
    )
    await services.credentials.grant(
        ROOT, META, world.other_practitioner, software.id, ("agenda:read",)
    )
    carl = await services.directory.register_patient(
        ROOT,
        META,
        first_name=EVIL_NAME,
        last_name="@Walk-In",
        birth_date=date(1975, 3, 3),
        sex=Sex.MALE,
        email="carl@example.org",
        phone="+33 6 44 44 44 44",
    )
    alice_ap = await _book(services, world.practitioner, paris(WEDNESDAY, "09:00"), world.patient)
    bob_ap = await _book(
        services, world.practitioner, paris(WEDNESDAY, "09:20"), world.other_patient
    )
    carl_ap = await _book(services, world.other_practitioner, paris(THURSDAY, "09:00"), carl.id)
    as_software = {**world.auth("integration"), "User-Agent": SOFTWARE_UA}
    agenda = f"/practitioners/{world.practitioner}/agenda"

    # Six hours of the software syncing its agenda from the usual address.
    for _ in range(6):
        clock.advance(hours=1)
        await settle(services)
        await ok(await client.get(agenda, params={"date": WEDNESDAY}, headers=as_software))

    # The stolen token, from elsewhere.
    clock.advance(minutes=30)
    await settle(services)
    attack_began = clock.now()
    missing = (str(uuid.uuid4()), str(uuid.uuid4()))
    head = await services.read.store.last_position()
    as_attacker = {
        **world.auth("integration"),
        "User-Agent": HOSTILE_UA,
        MIN_POSITION_HEADER: str(head),
    }
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER_IP, 0))
    async with aiohttp.ClientSession(str(client.make_url("")), connector=connector) as attacker:
        for path, day in (
            (agenda, WEDNESDAY),
            (f"/practitioners/{world.other_practitioner}/agenda", THURSDAY),
        ):
            async with attacker.get(path, params={"date": day}, headers=as_attacker) as answer:
                assert answer.status == 200, await answer.text()
            clock.advance(minutes=1)
        for asked in missing:
            async with attacker.get(f"/appointments/{asked}", headers=as_attacker) as answer:
                assert answer.status == 404
        async with attacker.get(f"/appointments/{alice_ap}", headers=as_attacker) as answer:
            assert answer.status == 200

    clock.advance(minutes=5)
    await settle(services)
    await ok(await client.get(agenda, params={"date": WEDNESDAY}, headers=as_software))

    # After the incident: Alice's new email, Bob's appointment cancelled.
    clock.advance(hours=2)
    new = {"email": "alice@new.example.org", "phone": "+33 6 11 11 11 11"}
    await ok(
        await client.put(
            f"/patients/{world.patient}/contact", json=new, headers=world.auth("patient")
        )
    )
    await services.booking.cancel(ROOT, META, uuid.UUID(bob_ap), "moved away")
    await settle(services)
    return Incident(
        str(software.token_id), alice_ap, bob_ap, carl_ap, str(carl.id), attack_began, missing
    )
