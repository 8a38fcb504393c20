"""Who is calling: the actor bound to a bearer token."""

import enum
from dataclasses import dataclass
from uuid import UUID

from domain.values import Source


class ActorKind(enum.StrEnum):
    PATIENT = "patient"
    PRACTITIONER = "practitioner"
    STAFF = "staff"
    INTEGRATION = "integration"
    ANALYST = "analyst"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: UUID
    establishment_id: UUID | None = None  # staff only
    token_id: UUID | None = None
    display_name: str = ""  # how a patient would recognise who touched their data

    @property
    def source(self) -> Source:
        """The provenance recorded on appointments this actor books or changes."""
        return {
            ActorKind.PATIENT: Source.PATIENT,
            ActorKind.PRACTITIONER: Source.PRACTITIONER,
            ActorKind.INTEGRATION: Source.INTEGRATION,
        }.get(self.kind, Source.STAFF)
