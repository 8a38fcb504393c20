"""`.carnet/demo.json` carries every id a walk-through needs, and the demo
integration has a grant, so that a walk-through can sync without SQL."""

import json
from pathlib import Path
from uuid import UUID

from domain.credentials import Grant
from infra.http.keys import Services
from infra.seed import DEMO_SCOPES, seed
from services.actors import ActorKind


async def test_the_demo_file_names_every_id_and_the_integration_may_sync(
    services: Services, tmp_path: Path
):
    demo = tmp_path / "demo.json"
    world = await seed(services, demo)
    assert set(world) >= {
        "establishment",
        "practitioners",
        "patients",
        "motives",
        "integration_id",
        "tokens",
        "token_ids",
        "grants",
    }
    assert set(world["token_ids"]) == set(world["tokens"]) == {k.value for k in ActorKind}
    for kind, secret in world["tokens"].items():  # the secret per kind, as before
        holder = await services.credentials.authenticate(secret)
        assert holder is not None and str(holder.token_id) == world["token_ids"][kind]
    software = await services.credentials.holder(world["tokens"]["integration"])
    assert software is not None and str(software.id) == world["integration_id"]
    grant = await services.booking.repo.get(
        Grant, Grant.create_id(UUID(world["practitioners"][0]), software.id)
    )
    assert grant is not None and grant.scopes == DEMO_SCOPES
    assert world["motives"][world["practitioners"][0]] == ["consultation", "first-visit"]
    assert json.loads(demo.read_text()) == world
    assert demo.stat().st_mode & 0o777 == 0o600

    # Seeded once: the same world on the next start.
    assert await seed(services, demo) == world


async def test_an_older_demo_file_is_completed_not_reseeded(services: Services, tmp_path: Path):
    demo = tmp_path / "demo.json"
    world = await seed(services, demo)
    old = {k: world[k] for k in ("establishment", "practitioners", "patients", "tokens", "seed_id")}
    demo.write_text(json.dumps(old))
    completed = await seed(services, demo)
    assert completed["seed_id"] == world["seed_id"]  # not seeded anew
    assert completed["token_ids"] == world["token_ids"]
    assert completed["integration_id"] == world["integration_id"]
    assert completed["grants"] == world["grants"]
    assert json.loads(demo.read_text()) == completed
