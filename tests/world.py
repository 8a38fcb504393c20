"""A small world for service and HTTP tests: two establishments, a
practitioner in each, two patients (Alice known at the first establishment,
Bob nowhere), and a token for each kind of actor."""

from dataclasses import dataclass, field
from datetime import date, time
from uuid import UUID

from domain.values import BookingPolicy, Motive, OpeningHours, Sex
from infra.http.keys import Services
from services.actors import Actor, ActorKind
from services.ports import Metadata

ROOT = Actor(ActorKind.ADMIN, UUID(int=0))
META = Metadata(actor_kind="admin", actor_id="test")
HOURS = tuple(
    OpeningHours(day, start, end)
    for day in range(5)
    for start, end in ((time(9), time(12)), (time(14), time(18)))
)


@dataclass
class World:
    establishment: UUID
    other_establishment: UUID
    practitioner: UUID
    other_practitioner: UUID
    patient: UUID
    other_patient: UUID
    tokens: dict[str, str] = field(default_factory=dict)
    actors: dict[str, Actor] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def make_world(services: Services) -> World:
    d = services.directory
    e1 = await d.register_establishment(ROOT, META, "Cabinet A", "1 rue A", "Paris", "Europe/Paris")
    e2 = await d.register_establishment(ROOT, META, "Cabinet B", "2 rue B", "Lyon", "Europe/Paris")
    motives = [
        Motive("consultation", "Consultation", 20),
        Motive("long", "Long visit", 40),
        Motive("phone-only", "Desk-only motive", 15, online=False),
    ]
    p1 = await d.register_practitioner(
        ROOT,
        META,
        name="Dr One",
        specialty="general practice",
        establishment_id=e1.id,
        policy=BookingPolicy(),
        motives=motives,
        hours=HOURS,
    )
    p2 = await d.register_practitioner(
        ROOT,
        META,
        name="Dr Two",
        specialty="dentistry",
        establishment_id=e2.id,
        policy=BookingPolicy(),
        motives=motives,
        hours=HOURS,
    )
    # Alice walked in at Cabinet A, whose desk registered her: that practice
    # knows her and may book for her. Bob signed up on the platform and is
    # known nowhere until he books somewhere himself.
    desk = Actor(ActorKind.STAFF, UUID(int=1), establishment_id=e1.id)
    desk_meta = Metadata(actor_kind="staff", actor_id=str(desk.id))
    patients = []
    for first, email, by, meta in (
        ("Alice", "alice@example.org", desk, desk_meta),
        ("Bob", "bob@example.org", ROOT, META),
    ):
        saved = await d.register_patient(
            by,
            meta,
            first_name=first,
            last_name="Test",
            birth_date=date(1980, 1, 1),
            sex=Sex.OTHER,
            email=email,
            phone="+33 6 00 00 00 00",
        )
        patients.append(saved.id)
    world = World(e1.id, e2.id, p1.id, p2.id, patients[0], patients[1])
    kinds = {
        "admin": (ActorKind.ADMIN, None, None),
        "patient": (ActorKind.PATIENT, patients[0], None),
        "other_patient": (ActorKind.PATIENT, patients[1], None),
        "practitioner": (ActorKind.PRACTITIONER, p1.id, None),
        "other_practitioner": (ActorKind.PRACTITIONER, p2.id, None),
        "staff": (ActorKind.STAFF, None, e1.id),
        "other_staff": (ActorKind.STAFF, None, e2.id),
        "integration": (ActorKind.INTEGRATION, None, None),
        "analyst": (ActorKind.ANALYST, None, None),
    }
    for name, (kind, actor_id, establishment_id) in kinds.items():
        issued = await services.credentials.issue_token(
            ROOT, META, kind, actor_id, establishment_id, label=name
        )
        world.tokens[name] = issued.secret
        world.actors[name] = issued.actor
    return world
