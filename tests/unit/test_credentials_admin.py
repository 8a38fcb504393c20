"""The credential use cases an admin runs, against the in-memory fakes."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.errors import Forbidden, InvalidTransition, InvalidValue, NotFound
from services.actors import Actor, ActorKind
from services.credentials import ROTATED, CredentialService
from services.ports import Metadata, TokenQuery
from tests.unit.fakes import FakeRepository, FakeTokenStore

ROOT = Actor(ActorKind.ADMIN, uuid4())
META = Metadata(actor_kind="admin", actor_id="unit")
# The rotation keeps the period between the token's issue (its event's timestamp, real
# time) and its expiry (from this clock), so the clock must tell the real time: a fixed
# date here made the test fail on any other day.
NOW = datetime.now(UTC)


class Clock:
    def now(self) -> datetime:
        return NOW


@pytest.fixture
def service() -> CredentialService:
    repo = FakeRepository()
    return CredentialService(repo, Clock(), FakeTokenStore(repo))


async def test_rotation_keeps_the_actor_and_the_validity_period(service: CredentialService):
    issued = await service.issue_token(ROOT, META, ActorKind.ANALYST, label="a", valid_days=30)
    assert issued.actor.token_id is not None
    new = await service.rotate_token(ROOT, META, issued.actor.token_id)
    assert (new.actor.kind, new.actor.id, new.actor.display_name) == (
        ActorKind.ANALYST,
        issued.actor.id,
        "a",
    )
    assert new.replaces == issued.actor.token_id and new.secret != issued.secret
    assert await service.authenticate(issued.secret) is None
    assert await service.authenticate(new.secret) is not None
    assert new.actor.token_id is not None
    rows = {r.token_id: r for r in await service.list_tokens(ROOT, TokenQuery())}
    assert (rows[issued.actor.token_id].state, rows[issued.actor.token_id].reason) == (
        "revoked",
        ROTATED,
    )
    expires = rows[new.actor.token_id].expires_at
    assert expires is not None
    # Thirty days from the rotation (the fake clock), give or take the issue's real time.
    assert abs(expires - (NOW + timedelta(days=30))) < timedelta(days=1)
    with pytest.raises(InvalidTransition):
        await service.rotate_token(ROOT, META, issued.actor.token_id)
    with pytest.raises(NotFound):
        await service.rotate_token(ROOT, META, uuid4())
    with pytest.raises(InvalidValue):
        await service.rotate_token(ROOT, META, new.actor.token_id or uuid4(), valid_days=0)


async def test_only_an_admin_lists_or_rotates(service: CredentialService):
    issued = await service.issue_token(ROOT, META, ActorKind.OPERATOR, label="on-call")
    assert issued.actor.token_id is not None
    with pytest.raises(Forbidden):
        await service.list_tokens(issued.actor, TokenQuery())
    with pytest.raises(Forbidden):
        await service.rotate_token(issued.actor, META, issued.actor.token_id)
    with pytest.raises(Forbidden):
        await service.list_grants(issued.actor)
    with pytest.raises(InvalidValue):
        await service.list_tokens(ROOT, TokenQuery(limit=0))
