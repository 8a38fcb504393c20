"""The demo world that `make run` serves: seeded once, reused afterwards."""

import json
import logging
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from domain.directory import Establishment
from domain.values import BookingPolicy, Motive, OpeningHours, Sex
from infra.http.keys import Services
from infra.readmodels import NotCaughtUp
from services.actors import Actor, ActorKind
from services.ports import Metadata

log = logging.getLogger("carnet.seed")

WEEKDAYS = range(5)
DAY_HOURS = ((time(9), time(12)), (time(14), time(18)))

PRACTITIONERS: list[dict[str, Any]] = [
    {
        "name": "Dr Claire Martin",
        "specialty": "general practice",
        "motives": [
            Motive("consultation", "Consultation", 20),
            Motive("first-visit", "First visit", 30),
        ],
    },
    {
        "name": "Dr Hugo Bernard",
        "specialty": "dentistry",
        "motives": [
            Motive("checkup", "Check-up", 30),
            Motive("emergency", "Dental emergency", 15, online=False),
        ],
    },
    {
        "name": "Dr Inès Petit",
        "specialty": "pediatrics",
        "motives": [Motive("consultation", "Consultation", 30)],
    },
]
PATIENTS = [
    (
        "Alice",
        "Durand",
        date(1985, 4, 12),
        Sex.FEMALE,
        "alice.durand@example.org",
        "+33 6 12 34 56 78",
    ),
    (
        "Bruno",
        "Lefèvre",
        date(1972, 11, 3),
        Sex.MALE,
        "bruno.lefevre@example.org",
        "+33 6 98 76 54 32",
    ),
]


# What the demo practice software may do on the first practitioner's agenda:
# read it and book, but not see who the patients are.
DEMO_SCOPES = ("agenda:read", "appointments:write")


async def seed(services: Services, demo_file: Path) -> dict[str, Any]:
    """Create the demo world unless demo_file says it exists in this database.

    The file holds every id a walk-through needs: the establishment, the
    practitioners with their motive ids, the patients, the integration and
    its grant, and per actor kind a token's secret (`tokens`, as before) and
    id (`token_ids`). A file written before those ids existed is completed.
    """
    directory = services.directory
    root = Actor(ActorKind.ADMIN, UUID(int=0))
    meta = Metadata(actor_kind="admin", actor_id="seed", request_id="seed")
    world = _load(demo_file)
    if world is not None:
        existing = await services.booking.repo.get(Establishment, UUID(world["establishment"]))
        if existing is not None:
            if await _complete(services, world, root, meta):
                _save(demo_file, world)
            return world
        log.info("demo file %s names another database; seeding anew", demo_file)
    saved = await directory.register_establishment(
        root, meta, "Maison de santé Carnet", "12 rue des Lilas", "Paris", "Europe/Paris"
    )
    hours = tuple(OpeningHours(day, start, end) for day in WEEKDAYS for start, end in DAY_HOURS)
    practitioners = []
    motives: dict[str, list[str]] = {}
    for p in PRACTITIONERS:
        made = await directory.register_practitioner(
            root,
            meta,
            name=p["name"],
            specialty=p["specialty"],
            establishment_id=saved.id,
            policy=BookingPolicy(),
            motives=p["motives"],
            hours=hours,
        )
        practitioners.append(str(made.id))
        motives[str(made.id)] = [m.id for m in p["motives"]]
    # The demo patients were registered at the desk, so the demo practitioner,
    # desk and software may book for them (a practice books only patients it knows).
    desk = Actor(ActorKind.STAFF, uuid4(), establishment_id=saved.id)
    patients = []
    for first, last, born, sex, email, phone in PATIENTS:
        made = await directory.register_patient(
            desk,
            meta,
            first_name=first,
            last_name=last,
            birth_date=born,
            sex=sex,
            email=email,
            phone=phone,
        )
        patients.append(str(made.id))
    admin = await services.credentials.issue_token(root, meta, ActorKind.ADMIN, label="demo admin")
    tokens = {"admin": admin.secret}
    token_ids = {"admin": str(admin.actor.token_id)}
    establishment = saved.id
    issue: list[tuple[ActorKind, UUID | None, UUID | None, str]] = [
        (ActorKind.PATIENT, UUID(patients[0]), None, "demo patient"),
        (ActorKind.PRACTITIONER, UUID(practitioners[0]), None, "demo practitioner"),
        (ActorKind.STAFF, None, establishment, "demo staff"),
        (ActorKind.INTEGRATION, None, None, "MediSoft Agenda (demo)"),
        (ActorKind.ANALYST, None, None, "demo analyst"),
        (ActorKind.OPERATOR, None, None, "demo operator"),
    ]
    integration_id = ""
    for kind, actor_id, place, label in issue:
        issued = await services.credentials.issue_token(
            root, meta, kind, actor_id, place, label=label
        )
        tokens[kind.value] = issued.secret
        token_ids[kind.value] = str(issued.actor.token_id)
        if kind is ActorKind.INTEGRATION:
            integration_id = str(issued.actor.id)
    world = {
        "establishment": str(saved.id),
        "practitioners": practitioners,
        "patients": patients,
        "motives": motives,
        "integration_id": integration_id,
        # Secrets per actor kind, as `Authorization: Bearer …` takes them.
        "tokens": tokens,
        # The same tokens' ids, as the admin routes and `carnet tokens` take them.
        "token_ids": token_ids,
        "grants": [],
        "seed_id": str(uuid4()),
    }
    await _complete(services, world, root, meta)
    _save(demo_file, world)
    return world


async def _complete(services: Services, world: dict[str, Any], root: Actor, meta: Metadata) -> bool:
    """Add what an older demo file lacks (ids, the integration's grant); True if changed."""
    changed = False
    credentials = services.credentials
    if "token_ids" not in world:
        ids: dict[str, str] = {}
        for kind, secret in world.get("tokens", {}).items():
            holder = await credentials.holder(secret)
            if holder is not None:
                ids[kind] = str(holder.token_id)
        world["token_ids"] = ids
        changed = True
    if not world.get("integration_id") and "integration" in world.get("tokens", {}):
        holder = await credentials.holder(world["tokens"]["integration"])
        if holder is not None:
            world["integration_id"] = str(holder.id)
            changed = True
    if "motives" not in world:
        world["motives"] = {
            pid: [m.id for m in p["motives"]]
            for pid, p in zip(world["practitioners"], PRACTITIONERS, strict=False)
        }
        changed = True
    if not world.get("grants") and world.get("integration_id") and world["practitioners"]:
        practitioner_id, integration_id = world["practitioners"][0], world["integration_id"]
        given = await credentials.grant(
            root, meta, UUID(practitioner_id), UUID(integration_id), DEMO_SCOPES
        )
        world["grants"] = [
            {
                "practitioner_id": practitioner_id,
                "integration_id": integration_id,
                "scopes": list(given.scopes),
            }
        ]
        changed = True
    return changed


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, world: dict[str, Any]) -> None:
    # The file holds bearer tokens: readable by its owner only.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(world, indent=2))
    path.chmod(0o600)


async def first_free_slot(services: Services, world: dict[str, Any]) -> str | None:
    """The demo patient's first bookable consultation, from the availability read model."""
    head = await services.read.store.last_position()
    try:
        if head:
            await services.read.wait_for(head, ["availability"], within=30)
    except NotCaughtUp:  # a stopped projection must not stop the server starting
        log.warning("availability read model behind; no example slot to print")
        return None
    patient = Actor(ActorKind.PATIENT, UUID(world["patients"][0]))
    today = services.booking.clock.now().date()
    offers = await services.queries.offers(
        patient,
        today,
        today + timedelta(days=14),
        practitioner_id=UUID(world["practitioners"][0]),
        motive_id="consultation",
    )
    slots = [slot for offer in offers for slot in offer.slots]
    return slots[0].start.isoformat().replace("+00:00", "Z") if slots else None
