"""`carnet admin bootstrap`: the first admin token of a production database, once.

It issues an admin token (through the CredentialService, as the built-in
admin, with `actor_id` "bootstrap" in the events' metadata), prints its
secret once, and records that it ran in `carnet.admin_bootstrap`. It refuses
to run again on the same database, even after a crash half-way: a token
event written by a bootstrap counts as well as the record.

Two bootstraps at once: the first to take the advisory lock issues the
token and commits the record before releasing it; the second then finds
the record (or the token's events) and refuses.
"""

from uuid import UUID

import asyncpg

from infra.http.keys import Services
from infra.schema import SCHEMA
from services.actors import Actor, ActorKind
from services.credentials import IssuedToken
from services.ports import Metadata

BOOTSTRAP_LOCK = 72810007
ACTOR = "bootstrap"
LABEL = "first admin (carnet admin bootstrap)"
META = Metadata(actor_kind="admin", actor_id=ACTOR, request_id=ACTOR)


class AlreadyBootstrapped(Exception):
    def __init__(self, token_id: UUID | None, done_at: object) -> None:
        self.token_id = token_id
        when = f" on {done_at}" if done_at else ""
        which = f" (token {token_id})" if token_id else ""
        super().__init__(
            f"an admin token was already bootstrapped on this database{when}{which}; "
            "ask an admin for a token, or have one issue you one with `carnet tokens issue`"
        )


async def bootstrap(pool: asyncpg.Pool, services: Services) -> IssuedToken:
    """Issue the first admin token; raise AlreadyBootstrapped if one ever was."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", BOOTSTRAP_LOCK)
        done = await conn.fetchrow(f"SELECT token_id, done_at FROM {SCHEMA}.admin_bootstrap")
        if done is not None:
            raise AlreadyBootstrapped(done["token_id"], done["done_at"])
        # A bootstrap that issued its token but died before its record.
        earlier = await conn.fetchrow(
            f"""SELECT originator_id, recorded_at FROM {SCHEMA}.events
            WHERE metadata ->> 'actor_id' = '{ACTOR}' ORDER BY position LIMIT 1"""
        )
        if earlier is not None:
            raise AlreadyBootstrapped(earlier["originator_id"], earlier["recorded_at"])
        issued = await services.credentials.issue_token(
            Actor(ActorKind.ADMIN, UUID(int=0)), META, ActorKind.ADMIN, label=LABEL
        )
        await conn.execute(
            f"INSERT INTO {SCHEMA}.admin_bootstrap (token_id) VALUES ($1)", issued.actor.token_id
        )
    return issued


def announce(issued: IssuedToken) -> str:
    return (
        f"token_id: {issued.actor.token_id}\n"
        f"actor:    admin {issued.actor.id}\n"
        f"token:    {issued.secret}\n"
        "\n"
        "This is the only time the token is shown: keep it in your secret store now.\n"
        "Carnet keeps only its hash; `carnet admin bootstrap` will not run again here."
    )
