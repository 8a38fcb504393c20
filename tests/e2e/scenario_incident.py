"""The incident and what follows it.

- Software A's token, stolen, is used from another address and another user
  agent while the legitimate software keeps syncing with the same token from
  its usual one. The attacker lists the public directory, probes every
  practitioner's agenda, walks every agenda it can reach day by day, opens
  some appointments one by one, and looks at today's agendas again at the end.
- An ordinary patient account, from a new address, asks for appointment ids
  that are not its own (real ones and random ones) until it is throttled and
  suspended, then tries a few more.
- Afterwards, appointments the attacker saw are cancelled and rescheduled,
  and patients change their contact details, so that today's values differ
  from the ones disclosed.
"""

import uuid
from datetime import date, timedelta

from tests.e2e.scenario_net import Agent
from tests.e2e.scenario_traffic import Op, book, cancel, morning, read_own, reschedule
from tests.e2e.scenario_world import APP_UA, SPECIALTIES, Cast, Patient, issue

ATTACKER_ADDRESS, ATTACKER_UA = "127.0.0.2", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101"
ENUMERATOR_ADDRESS, ENUMERATOR_UA = "127.0.0.3", "curl/8.5.0"
WALK = range(-10, 21)  # days around the incident the attacker walks
SUSPENDED_TRIES = 3  # look-ups the suspended account still sends


class Attack:
    """The stolen token's requests, with the legitimate traffic going on in between."""

    def __init__(self, cast: Cast, meanwhile: list[Op]) -> None:
        self.cast = cast
        self.meanwhile = meanwhile
        # Fresh: what the attacker sees decides what it asks next, the same on every run.
        self.agent = cast.net.agent(
            "attacker", cast.stolen["token"], ATTACKER_UA, ATTACKER_ADDRESS, fresh=True
        )

    async def _between(self) -> None:
        net = self.cast.net
        net.tick(0.4, 2.5)  # a script: much faster than the software's syncs
        if self.meanwhile and net.rng.random() < 0.2:
            net.tick(0.1, 1.0)
            await self.meanwhile.pop()()

    async def agenda(self, practitioner: str, day: date) -> list[str]:
        await self._between()
        call = await self.agent.get(
            f"/practitioners/{practitioner}/agenda", expect=(200, 404), date=day.isoformat()
        )
        return [a["id"] for a in call.body["appointments"]] if call.status == 200 else []

    async def run(self, today: date) -> None:
        cast, rng = self.cast, self.cast.net.rng
        morning(cast, today, 13)
        found: list[dict[str, str]] = []
        for city in sorted({e.city for e in cast.practices if e.grant != "b"}):
            for specialty in SPECIALTIES:
                await self._between()
                call = await self.agent.get("/practitioners", city=city, specialty=specialty)
                found += call.body["practitioners"]
        # One probe per establishment: a practice grants the software all its agendas.
        practices: dict[str, list[str]] = {}
        for listed in found:
            practices.setdefault(listed["establishment_id"], []).append(listed["id"])
        reachable = []
        registry = cast.registry
        for establishment in rng.sample(registry.ordered(practices), len(practices)):
            first = registry.ordered(practices[establishment])[0]
            await self._between()
            call = await self.agent.get(
                f"/practitioners/{first}/agenda", expect=(200, 404), date=today.isoformat()
            )
            if call.status == 200:
                reachable += registry.ordered(practices[establishment])
        seen: list[str] = []
        for practitioner in reachable:
            for offset in WALK:
                seen += await self.agenda(practitioner, today + timedelta(days=offset))
        seen = registry.ordered(seen)
        for appointment in rng.sample(seen, len(seen) // 4):
            await self._between()
            await self.agent.get(f"/appointments/{appointment}")
        for practitioner in reachable:  # a second look at today's agendas
            await self.agenda(practitioner, today)
        for op in self.meanwhile:  # the rest of the afternoon
            cast.net.tick(20, 120)
            await op()


async def open_account(cast: Cast, today: date) -> tuple[Patient, str]:
    """The enumerator's ordinary account: signed up, books twice, reads its list."""
    net = cast.net
    body = {
        "first_name": "Eve",
        "last_name": "Mallory",
        "birth_date": "1990-04-01",
        "sex": "female",
        "email": "eve.mallory@example.com",
        "phone": "+33 7 11 22 33 44",
    }
    patient_id = (await cast.admin.post("/patients", body)).body["id"]
    cast.registry.contacts[patient_id] = (body["email"], body["phone"])
    cast.registry.names[patient_id] = "Eve Mallory"
    token = await issue(cast.admin, actor_kind="patient", actor_id=patient_id)
    account = Patient(patient_id, set(), net.agent("account", token["token"], APP_UA))
    for _ in range(2):
        net.tick(60, 300)
        before = len(cast.diary.slots)
        while len(cast.diary.slots) == before:
            await book_for(cast, today, account)
    net.tick(60, 300)
    await read_own(account)
    return account, token["token_id"]


async def book_for(cast: Cast, today: date, patient: Patient) -> None:
    # `book` by "app" picks a random patient with an app: narrow it to this one.
    everyone = cast.patients
    cast.patients = [patient]
    try:
        await book(cast, today, "app")
    finally:
        cast.patients = everyone


async def enumerate_ids(cast: Cast, today: date, account: Patient) -> Agent:
    """The account asks for other people's appointments until it is locked out."""
    net = cast.net
    morning(cast, today, 16)
    assert account.app is not None
    agent = net.agent("enumerator", account.app.token, ENUMERATOR_UA, ENUMERATOR_ADDRESS)
    own = [s.appointment_id for s in cast.diary.slots.values() if s.patient is account]
    foreign = [a for a in cast.registry.appointments if a not in own]
    tries = [own[0]]
    suspended = 0
    while suspended < SUSPENDED_TRIES:
        if not tries:
            roll = net.rng.random()
            tries = [
                own[-1]
                if roll < 0.05
                else net.rng.choice(foreign)
                if roll < 0.4
                else str(uuid.UUID(int=net.rng.getrandbits(128), version=4))
            ]
        net.tick(0.2, 1.2)
        call = await agent.get(f"/appointments/{tries.pop()}", expect=(200, 404, 429, 401))
        suspended += call.status == 401
    return agent


async def aftermath(
    cast: Cast, today: date, seen: set[str], patients: set[str]
) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Changes after the incident to what the attacker saw, spread over the morning.

    Returns the appointments changed and the patients' new contact details.
    """
    rng = cast.net.rng
    morning(cast, today, 9)
    later = [s for s in cast.diary.booked() if s.appointment_id in seen and s.day > today]
    changed, contacts = set(), {}
    for slot in rng.sample(later, len(later) // 5):
        changed.add(slot.appointment_id)
        cast.net.tick(30, 300)
        if rng.random() < 0.5:
            await cancel(cast, slot, "changed my mind")
        else:
            await reschedule(cast, slot, today)
    by_id = {p.id: p for p in cast.patients}
    concerned = cast.registry.ordered(patients & set(by_id))
    for patient_id in rng.sample(concerned, len(concerned) // 3):
        cast.net.tick(30, 300)
        agent = by_id[patient_id].app or cast.admin
        email, phone = cast.registry.contacts[patient_id]
        body = {"email": f"new.{email}", "phone": phone[:-2] + "99"}
        profile = (await agent.put(f"/patients/{patient_id}/contact", body)).body
        contacts[patient_id] = (profile["email"], profile["phone"])
    return changed, contacts
