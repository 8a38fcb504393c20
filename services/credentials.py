"""Use cases for bearer tokens and integration grants."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID, uuid4

from domain.credentials import Grant, Token
from domain.directory import Establishment, Patient, Practitioner
from domain.errors import Forbidden, InvalidTransition, InvalidValue, NotFound
from services.actors import Actor, ActorKind
from services.common import get_or_404, require, retrying
from services.policy import Action, Kind, Resource, allowed
from services.ports import (
    Admission,
    Clock,
    GrantQuery,
    GrantRow,
    Metadata,
    RateLimit,
    Repository,
    TokenQuery,
    TokenRow,
    TokenStore,
    TokenView,
)

TOKEN_PREFIX = "carnet_"
ROTATED = "rotated"  # the reason a rotated token is revoked with


def hash_token(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class IssuedToken:
    secret: str
    actor: Actor
    position: int = 0  # of the last event its issuing appended
    replaces: UUID | None = None  # a rotation: the token it replaced, now revoked


@dataclass(frozen=True)
class Admittance:
    """What a request's bearer token allows, from one look-up that also charged it.

    `actor`: the actor of an active, unexpired token (None otherwise).
    `holder`: whom a known token names, usable or not (None: no such token),
    since refusals are recorded against it. `wait`: 0 if the token's budget
    paid for this request, else the seconds until it will (nothing is taken
    from an unknown token: it has no budget).
    """

    actor: Actor | None
    holder: Actor | None
    wait: float = 0.0


class CredentialService:
    def __init__(
        self,
        repo: Repository,
        clock: Clock,
        tokens: TokenStore,
        admission: Admission | None = None,
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.tokens = tokens
        # The shared budgets; only the HTTP edge admits requests, so the
        # commands that manage tokens are built without one.
        self.admission = admission

    # -- tokens ------------------------------------------------------------

    async def issue_token(
        self,
        actor: Actor,
        meta: Metadata,
        kind: ActorKind,
        actor_id: UUID | None = None,
        establishment_id: UUID | None = None,
        label: str = "",
        valid_days: int | None = None,
    ) -> IssuedToken:
        """Bind a new random bearer token to an actor; only its hash is kept."""
        if not allowed(actor, Action.CREATE, Resource(Kind.TOKEN)):
            raise Forbidden("only an admin issues tokens")
        display_name = label
        if kind in (ActorKind.PATIENT, ActorKind.PRACTITIONER):
            if actor_id is None:
                raise InvalidValue(f"required for a {kind.value} token", field="actor_id")
            if kind is ActorKind.PATIENT:
                await get_or_404(self.repo, Patient, actor_id, "actor_id")
            else:
                display_name = (
                    await get_or_404(self.repo, Practitioner, actor_id, "actor_id")
                ).name
        if kind is ActorKind.STAFF:
            if establishment_id is None:
                raise InvalidValue("required for a staff token", field="establishment_id")
            place = await get_or_404(self.repo, Establishment, establishment_id, "establishment_id")
            display_name = f"{place.name} (staff)"
        elif establishment_id is not None:
            raise InvalidValue("only staff tokens name an establishment", field="establishment_id")
        if kind is ActorKind.INTEGRATION and not label.strip():
            raise InvalidValue("name the practice software", field="label")
        if valid_days is not None and not 1 <= valid_days <= 3650:
            raise InvalidValue("1 to 3650 days", field="valid_days")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires_at = (
            self.clock.now() + timedelta(days=valid_days) if valid_days is not None else None
        )
        token = Token(
            token_hash=hash_token(secret).hex(),
            actor_kind=kind.value,
            actor_id=actor_id or uuid4(),
            establishment_id=establishment_id,
            display_name=display_name or kind.value,
            expires_at=expires_at,
        )
        position = await self.tokens.save(token, meta)
        return _issued(secret, token, position)

    async def list_tokens(self, actor: Actor, query: TokenQuery) -> list[TokenRow]:
        """Every token, filtered: what an admin needs to find one (never a secret)."""
        if not allowed(actor, Action.READ, Resource(Kind.TOKEN)):
            raise Forbidden("only an admin lists tokens")
        if not 1 <= query.limit <= 1000:
            raise InvalidValue("1 to 1000", field="limit")
        return await self.tokens.tokens(query)

    async def rotate_token(
        self, actor: Actor, meta: Metadata, token_id: UUID, valid_days: int | None = None
    ) -> IssuedToken:
        """A new secret for the same actor, and the old one revoked, in one transaction.

        A suspended token may be rotated (its secret may be what leaked); a
        revoked one may not. The new token keeps the old one's validity period
        unless `valid_days` is given.
        """
        if not allowed(actor, Action.MANAGE, Resource(Kind.TOKEN, token_id=token_id)):
            raise Forbidden("only an admin rotates tokens")
        if valid_days is not None and not 1 <= valid_days <= 3650:
            raise InvalidValue("1 to 3650 days", field="valid_days")

        async def attempt() -> IssuedToken:
            old = await self._token(token_id)
            if old.state == "revoked":
                raise InvalidTransition("a revoked token cannot be rotated", field="token_id")
            now = self.clock.now()
            if valid_days is not None:
                expires_at = now + timedelta(days=valid_days)
            elif old.expires_at is not None:
                expires_at = now + max(old.expires_at - old.created_on, timedelta(days=1))
            else:
                expires_at = None
            secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
            new = Token(
                token_hash=hash_token(secret).hex(),
                actor_kind=old.actor_kind,
                actor_id=old.actor_id,
                establishment_id=old.establishment_id,
                display_name=old.display_name,
                expires_at=expires_at,
                replaces=old.id,
            )
            old.revoke(ROTATED)
            position = await self.tokens.save_all([old, new], meta)
            return _issued(secret, new, position, replaces=old.id)

        return await retrying(attempt)

    def _admission(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("this CredentialService was built without an admission adapter")
        return self.admission

    async def admit(self, secret: str, limit: RateLimit) -> Admittance:
        """Authenticate and charge the token's shared budget, in one round trip.

        The token's state is read fresh every time (no cache), so a token
        suspended or revoked by any process is refused by all from the next
        request.
        """
        admitted = await self._admission().admit(hash_token(secret), limit)
        view = admitted.view
        if view is None:
            return Admittance(None, None)
        holder = _actor_of(view)
        return Admittance(holder if self._usable(view) else None, holder, admitted.wait)

    async def count_miss(self, token_id: UUID, limit: int, window_seconds: float) -> int | None:
        """A not-found/denied look-up, counted across every process; the count
        once when it reaches `limit` in the window (report_enumeration then)."""
        return await self._admission().miss(token_id, limit, window_seconds)

    def _usable(self, view: TokenView) -> bool:
        if view.state != "active":
            return False
        return view.expires_at is None or self.clock.now() < view.expires_at

    async def holder(self, secret: str) -> Actor | None:
        """Whom a token names, usable or not: refusals are recorded against it."""
        view = await self.tokens.find(hash_token(secret))
        return _actor_of(view) if view is not None else None

    async def authenticate(self, secret: str) -> Actor | None:
        """The actor behind an active, unexpired token; None otherwise."""
        view = await self.tokens.find(hash_token(secret))
        return _actor_of(view) if view is not None and self._usable(view) else None

    async def _token(self, token_id: UUID) -> Token:
        token = await self.repo.get(Token, token_id)
        if token is None:
            raise NotFound("no such token", field="token_id")
        return token

    async def revoke_token(self, actor: Actor, meta: Metadata, token_id: UUID, reason: str) -> int:
        """An admin revokes any token; anyone may revoke their own."""
        require(actor, Action.CANCEL, Resource(Kind.TOKEN, token_id=token_id), "token_id")

        async def attempt() -> int:
            token = await self._token(token_id)
            token.revoke(reason)
            return await self.tokens.save(token, meta)

        return await retrying(attempt)

    async def suspend_token(self, meta: Metadata, token_id: UUID, reason: str) -> int:
        """Called by the enumeration defence, not by a person."""

        async def attempt() -> int:
            token = await self._token(token_id)
            token.suspend(reason)
            return await self.tokens.save(token, meta) if token.pending_events else 0

        return await retrying(attempt)

    async def report_enumeration(
        self, meta: Metadata, token_id: UUID, misses: int, window_seconds: float, suspend: bool
    ) -> int:
        """A burst of not-found or denied look-ups: an event, and by policy a suspension."""

        async def attempt() -> int:
            token = await self._token(token_id)
            token.flag_enumeration(misses, window_seconds)
            if suspend:
                token.suspend(f"enumeration suspected: {misses} misses in {window_seconds:g}s")
            return await self.tokens.save(token, meta)

        return await retrying(attempt)

    async def lift_suspension(self, actor: Actor, meta: Metadata, token_id: UUID) -> int:
        if not allowed(actor, Action.MANAGE, Resource(Kind.TOKEN, token_id=token_id)):
            raise Forbidden("only an admin lifts a suspension")

        async def attempt() -> int:
            token = await self._token(token_id)
            token.lift_suspension()
            return await self.tokens.save(token, meta)

        return await retrying(attempt)

    # -- integration grants ------------------------------------------------

    async def _grantor(self, actor: Actor, practitioner_id: UUID) -> Practitioner:
        practitioner = await get_or_404(self.repo, Practitioner, practitioner_id, "practitioner_id")
        resource = Resource(
            Kind.PRACTITIONER,
            practitioner_id=practitioner.id,
            establishment_id=practitioner.establishment_id,
        )
        require(actor, Action.MANAGE, resource, "practitioner_id", "practitioner")
        return practitioner

    async def grant(
        self,
        actor: Actor,
        meta: Metadata,
        practitioner_id: UUID,
        integration_id: UUID,
        scopes: tuple[str, ...],
    ) -> Grant:
        """The practitioner, their establishment's staff or an admin grants scopes."""
        scopes = Grant.check(scopes)

        async def attempt() -> Grant:
            practitioner = await self._grantor(actor, practitioner_id)
            grant = await self.repo.get(Grant, Grant.create_id(practitioner.id, integration_id))
            if grant is None:
                grant = Grant(
                    practitioner_id=practitioner.id, integration_id=integration_id, scopes=scopes
                )
            else:
                grant.change(scopes)
            if grant.pending_events:
                await self.tokens.save_grant(grant, meta)
            return grant

        return await retrying(attempt)

    async def revoke_grant(
        self, actor: Actor, meta: Metadata, practitioner_id: UUID, integration_id: UUID
    ) -> Grant:
        async def attempt() -> Grant:
            practitioner = await self._grantor(actor, practitioner_id)
            grant = await self.repo.get(Grant, Grant.create_id(practitioner.id, integration_id))
            if grant is None:
                raise NotFound("no such grant", field="integration_id")
            grant.revoke()
            if grant.pending_events:
                await self.tokens.save_grant(grant, meta)
            return grant

        return await retrying(attempt)

    async def list_grants(
        self,
        actor: Actor,
        practitioner_id: UUID | None = None,
        integration_id: UUID | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[GrantRow]:
        """Grants in force. An admin lists any; whoever may grant on a practitioner's
        agenda (the practitioner, their establishment's staff) lists that agenda's."""
        if not 1 <= limit <= 1000:
            raise InvalidValue("1 to 1000", field="limit")
        if practitioner_id is not None:
            await self._grantor(actor, practitioner_id)
        elif actor.kind is not ActorKind.ADMIN:
            raise Forbidden("only an admin lists every grant")
        return await self.tokens.grants(
            GrantQuery(
                practitioner_ids=frozenset({practitioner_id} if practitioner_id else ()),
                integration_ids=frozenset({integration_id} if integration_id else ()),
                after=after,
                limit=limit,
            )
        )


async def scopes_of(repo: Repository, actor: Actor, practitioner_id: UUID | None) -> frozenset[str]:
    """The scopes an integration holds on a practitioner's agenda (none for others)."""
    if actor.kind is not ActorKind.INTEGRATION or practitioner_id is None:
        return frozenset()
    grant = await repo.get(Grant, Grant.create_id(practitioner_id, actor.id))
    return frozenset(grant.scopes) if grant else frozenset()


def _issued(secret: str, token: Token, position: int, replaces: UUID | None = None) -> IssuedToken:
    return IssuedToken(
        secret,
        _actor(
            token.id, token.actor_kind, token.actor_id, token.establishment_id, token.display_name
        ),
        position,
        replaces,
    )


def _actor_of(view: TokenView) -> Actor:
    return _actor(
        view.token_id, view.actor_kind, view.actor_id, view.establishment_id, view.display_name
    )


def _actor(
    token_id: UUID, kind: str, actor_id: UUID, establishment_id: UUID | None, name: str
) -> Actor:
    return Actor(ActorKind(kind), actor_id, establishment_id, token_id=token_id, display_name=name)
