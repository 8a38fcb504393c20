"""Bearer tokens and integration grants, as aggregates: issuing, revoking,
suspending and granting are events in the log like any other change."""

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidTransition, InvalidValue

SCOPES = frozenset({"agenda:read", "appointments:write", "patients:contact:read"})


class Token(Aggregate):
    """A bearer token. Its id can be quoted anywhere; its secret is never stored,
    only a hash of it (which cannot be turned back into the secret)."""

    @event("Issued")
    def __init__(
        self,
        token_hash: str,
        actor_kind: str,
        actor_id: UUID,
        establishment_id: UUID | None,
        display_name: str,
        expires_at: datetime | None,
        replaces: UUID | None = None,
    ) -> None:
        self.token_hash = token_hash
        self.actor_kind = actor_kind
        self.actor_id = actor_id
        self.establishment_id = establishment_id
        self.display_name = display_name
        self.expires_at = expires_at
        self.state = "active"
        self.reason = ""
        # Rotation: the token this one was issued to replace (revoked "rotated").
        self.replaces = replaces

    def usable(self, now: datetime) -> bool:
        return self.state == "active" and (self.expires_at is None or now < self.expires_at)

    def revoke(self, reason: str) -> None:
        if self.state == "revoked":
            raise InvalidTransition("the token is already revoked", field="token_id")
        self._revoked(reason=reason[:200])

    @event("Revoked")
    def _revoked(self, reason: str) -> None:
        self.state = "revoked"
        self.reason = reason

    def suspend(self, reason: str) -> None:
        if self.state == "active":
            self._suspended(reason=reason[:200])

    @event("Suspended")
    def _suspended(self, reason: str) -> None:
        self.state = "suspended"
        self.reason = reason

    def flag_enumeration(self, misses: int, window_seconds: float) -> None:
        """Record that this token looked up many objects it may not see."""
        self._enumeration_suspected(misses=misses, window_seconds=window_seconds)

    @event("EnumerationSuspected")
    def _enumeration_suspected(self, misses: int, window_seconds: float) -> None:
        self.enumeration_flags = getattr(self, "enumeration_flags", 0) + 1

    def lift_suspension(self) -> None:
        if self.state != "suspended":
            raise InvalidTransition("the token is not suspended", field="token_id")
        self._suspension_lifted()

    @event("SuspensionLifted")
    def _suspension_lifted(self) -> None:
        self.state = "active"
        self.reason = ""


class Grant(Aggregate):
    """What one integration may do on one practitioner's agenda."""

    @event("Given")
    def __init__(
        self, practitioner_id: UUID, integration_id: UUID, scopes: tuple[str, ...]
    ) -> None:
        self.practitioner_id = practitioner_id
        self.integration_id = integration_id
        self.scopes = scopes

    @staticmethod
    def create_id(practitioner_id: UUID, integration_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/grant/{practitioner_id}/{integration_id}")

    @staticmethod
    def check(scopes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(scopes) - SCOPES)
        if unknown:
            raise InvalidValue(f"unknown scopes {unknown}; known: {sorted(SCOPES)}", "scopes")
        return tuple(sorted(set(scopes)))

    def change(self, scopes: tuple[str, ...]) -> None:
        scopes = self.check(scopes)
        if scopes != self.scopes:
            self._changed(scopes=scopes)

    @event("Changed")
    def _changed(self, scopes: tuple[str, ...]) -> None:
        self.scopes = scopes

    def revoke(self) -> None:
        if self.scopes:
            self._revoked()

    @event("Revoked")
    def _revoked(self) -> None:
        self.scopes = ()
