"""The scenario's world, built through the HTTP API only: establishments in
several cities, their desks and practitioners, patients registered at a
desk, and two practice softwares with different grants.

Only the first admin token is issued outside HTTP (as `carnet tokens issue`
would). What each answer says is kept in the `Registry` (the ground truth's
knowledge of the world) and in the `Diary` (which slots are taken).
"""

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.e2e.scenario_net import Agent, Net
from tests.e2e.scenario_truth import Booking, Registry

PARIS = ZoneInfo("Europe/Paris")
# (name, address, city) and who syncs it: software A with the patients'
# identity ("contact"), A without it ("masked"), or software B.
ESTABLISHMENTS = (
    ("Centre médical Voltaire", "12 boulevard Voltaire", "Paris", "contact"),
    ("Cabinet Saint-Jean", "4 rue Saint-Jean", "Lyon", "contact"),
    ("Maison de santé des Chartrons", "30 quai des Chartrons", "Bordeaux", "masked"),
    ("Cabinet du Vieux-Port", "2 quai du Port", "Marseille", "b"),
    ("Pôle santé Rive Gauche", "88 rue de Rennes", "Paris", "b"),
)
SPECIALTIES = ("general practice", "dentistry", "pediatrics", "dermatology", "ophthalmology")
FIRST = ("Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Gaëlle", "Hugo", "Inès", "Jules")
LAST = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Leroy", "Moreau")
MOTIVES = (
    {"id": "consultation", "name": "Consultation", "duration_minutes": 20},
    {"id": "long", "name": "Consultation longue", "duration_minutes": 40},
)
HOURS = [
    {"weekday": d, "start": s, "end": e}
    for d in range(5)
    for s, e in (("09:00:00", "12:00:00"), ("14:00:00", "18:00:00"))
]
# 20-minute units of a day: 09:00-12:00 is 0-8, 14:00-18:00 is 9-20.
UNITS = 21
BLOCK_ENDS = (8, 20)
SOFTWARE_A_UA = "MediSoft-Sync/7.3 (Windows NT 10.0)"
SOFTWARE_B_UA = "AgendaPlus-Connector/2.1"
APP_UA = "CarnetApp/3.1 (Android 14)"
BATCH = 10  # requests sent side by side while the world is set up


def local_start(day: date, unit: int) -> datetime:
    minutes = unit * 20 if unit < 9 else 300 + (unit - 9) * 20  # 14:00 is 09:00 + 5 h
    return datetime.combine(day, time(9), PARIS) + timedelta(minutes=minutes)


def instant(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Practice:
    id: str
    city: str
    grant: str  # "contact", "masked" or "b"
    desk: Agent
    practitioners: list[str] = field(default_factory=list)


@dataclass
class Patient:
    id: str
    known_at: set[str]  # establishments whose desk or software may book for them
    app: Agent | None  # the patient's own app, if they have an account


@dataclass
class Slot:
    appointment_id: str
    practitioner_id: str
    day: date
    units: tuple[int, ...]
    patient: Patient
    status: str = "booked"


@dataclass
class Diary:
    """Which units of which practitioner's day are taken, and by which appointment."""

    taken: dict[tuple[str, date], set[int]] = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)

    def free(self, practitioner: str, day: date, length: int) -> list[int]:
        taken = self.taken.get((practitioner, day), set())
        return [
            u
            for u in range(UNITS)
            if all(u + i not in taken for i in range(length))
            and not any(u <= end < u + length - 1 for end in BLOCK_ENDS)
            and u + length <= UNITS
        ]

    def take(self, slot: Slot) -> None:
        self.taken.setdefault((slot.practitioner_id, slot.day), set()).update(slot.units)
        self.slots[slot.appointment_id] = slot

    def release(self, appointment_id: str, status: str = "cancelled") -> Slot:
        slot = self.slots[appointment_id]
        slot.status = status
        self.taken[(slot.practitioner_id, slot.day)].difference_update(slot.units)
        return slot

    def booked(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.status == "booked"]


@dataclass
class Cast:
    net: Net
    registry: Registry
    admin: Agent
    practices: list[Practice]
    patients: list[Patient]
    software_a: Agent  # the legitimate software, at its usual address
    software_b: Agent
    stolen: dict[str, str]  # software A's token as issued: token, token_id, actor_id
    diary: Diary = field(default_factory=Diary)

    def practitioners(self, *grants: str) -> list[str]:
        return [p for e in self.practices if e.grant in grants for p in e.practitioners]

    def practice_of(self, practitioner: str) -> Practice:
        return next(e for e in self.practices if practitioner in e.practitioners)


async def issue(admin: Agent, **body: str) -> dict[str, str]:
    answer: dict[str, str] = (await admin.post("/admin/tokens", body)).body
    return answer


async def build_world(net: Net, admin_token: str, patients: int, per_practice: int) -> Cast:
    registry = Registry()
    admin = net.agent("admin", admin_token, "Carnet-Console/1.0")
    practices = await _practices(net, admin, registry, per_practice)
    a = await issue(admin, actor_kind="integration", label="MediSoft Cabinet")
    b = await issue(admin, actor_kind="integration", label="AgendaPlus")
    # The desks grant the softwares their practitioners' agendas.
    for practice in practices:
        integration, scopes = (
            (a, ["agenda:read", "patients:contact:read"])
            if practice.grant == "contact"
            else (a, ["agenda:read"])
            if practice.grant == "masked"
            else (b, ["agenda:read", "appointments:write"])
        )
        for practitioner in practice.practitioners:
            net.tick(5, 30)
            path = f"/practitioners/{practitioner}/grants/{integration['actor_id']}"
            await practice.desk.put(path, {"scopes": scopes})
    return Cast(
        net=net,
        registry=registry,
        admin=admin,
        practices=practices,
        patients=await _patients(net, admin, registry, practices, patients),
        software_a=net.agent("software-a", a["token"], SOFTWARE_A_UA),
        software_b=net.agent("software-b", b["token"], SOFTWARE_B_UA),
        stolen=a,
    )


async def _practices(
    net: Net, admin: Agent, registry: Registry, per_practice: int
) -> list[Practice]:
    """The establishments, each with its desk, whose staff register its practitioners."""
    practices = []
    for n, (name, address, city, grant) in enumerate(ESTABLISHMENTS):
        net.tick(20, 60)
        body = {"name": name, "address": address, "city": city, "timezone": "Europe/Paris"}
        establishment = (await admin.post("/establishments", body)).body["id"]
        registry.establishments[establishment] = city
        staff = await issue(
            admin, actor_kind="staff", establishment_id=establishment, label=f"{name} desk"
        )
        desk = net.agent(f"desk-{n}", staff["token"], "Mozilla/5.0 (Macintosh) Firefox/133.0")
        practice = Practice(establishment, city, grant, desk)
        for i in range(per_practice + (1 if n == 0 else 0)):
            net.tick(5, 30)
            doctor: dict[str, Any] = {
                "name": f"Dr {net.rng.choice(FIRST)} {net.rng.choice(LAST)}",
                "specialty": SPECIALTIES[(n + i) % len(SPECIALTIES)],
                "establishment_id": establishment,
                "motives": list(MOTIVES),
                "hours": HOURS,
            }
            practitioner = (await desk.post("/practitioners", doctor)).body["id"]
            practice.practitioners.append(practitioner)
            registry.practitioners[practitioner] = establishment
        practices.append(practice)
    return practices


async def _patients(
    net: Net, admin: Agent, registry: Registry, practices: list[Practice], count: int
) -> list[Patient]:
    """Patients registered at a desk, half of them with an app account.

    The desks work side by side: each request draws its id from the seed
    before it is sent, in order, so a batch is as reproducible as a sequence.
    """
    rng, wanted = net.rng, []
    for i in range(count):
        practice = rng.choice(practices)
        first, last = rng.choice(FIRST), f"{rng.choice(LAST)}-{i}"
        body = {
            "first_name": first,
            "last_name": last,
            "birth_date": f"{rng.randrange(1940, 2020)}-{rng.randrange(1, 13):02d}-15",
            "sex": rng.choice(["female", "male", "other"]),
            "email": f"{first.lower()}.{i}@example.org",
            "phone": f"+33 6 {i // 100:02d} {i % 100:02d} 00 01",
        }
        wanted.append((practice, body, rng.random() < 0.5))
    ids = []
    for batch in range(0, count, BATCH):
        net.tick(60, 600)
        calls = [e.desk.post("/patients", body) for e, body, _ in wanted[batch : batch + BATCH]]
        ids += [c.body["id"] for c in await asyncio.gather(*calls)]
    with_app = [(i, ids[i]) for i, (_, _, app) in enumerate(wanted) if app]
    tokens: dict[int, str] = {}
    for batch in range(0, len(with_app), BATCH):
        net.tick(10, 60)
        some = with_app[batch : batch + BATCH]
        issued = await asyncio.gather(
            *(issue(admin, actor_kind="patient", actor_id=p) for _, p in some)
        )
        tokens |= {i: t["token"] for (i, _), t in zip(some, issued, strict=True)}
    people = []
    for i, (patient_id, (practice, body, _)) in enumerate(zip(ids, wanted, strict=True)):
        registry.contacts[patient_id] = (body["email"], body["phone"])
        registry.names[patient_id] = f"{body['first_name']} {body['last_name']}"
        app = net.agent(f"patient-{i}", tokens[i], APP_UA) if i in tokens else None
        people.append(Patient(patient_id, {practice.id}, app))
    return people


def remember(cast: Cast, answer: dict[str, str], patient: Patient, units: tuple[int, ...]) -> None:
    """A booking's answer, in the registry and the diary."""
    practitioner = answer["practitioner_id"]
    establishment = cast.registry.practitioners[practitioner]
    cast.registry.appointments[answer["id"]] = Booking(patient.id, practitioner, establishment)
    day = datetime.fromisoformat(answer["start"]).astimezone(PARIS).date()
    cast.diary.take(Slot(answer["id"], practitioner, day, units, patient))
    patient.known_at.add(establishment)
