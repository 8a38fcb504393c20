"""Every refusal the domain can express derives from DomainError.

The HTTP edge maps the three families (NotFound, Conflict, RuleViolation) to
404, 409 and 422 in one place; `code` is the stable problem `type` suffix and
`field` names the input at fault when there is one.
"""


class DomainError(Exception):
    code = "domain-error"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(DomainError):
    code = "not-found"


class DataErased(DomainError):
    """The person's data has been erased (GDPR Art. 17): gone, for good."""

    code = "erased"


class Conflict(DomainError):
    code = "conflict"


class SlotTaken(Conflict):
    code = "slot-taken"


class IdempotencyKeyReused(Conflict):
    code = "idempotency-key-reused"


class RuleViolation(DomainError):
    code = "rule-violation"


class OutsideOpeningHours(RuleViolation):
    code = "outside-opening-hours"


class DuringAbsence(RuleViolation):
    code = "during-absence"


class WrongDuration(RuleViolation):
    code = "wrong-duration"


class TooLate(RuleViolation):
    """Below the minimum notice, or inside the cancellation window."""

    code = "too-late"


class BeyondHorizon(RuleViolation):
    code = "beyond-horizon"


class NotBookableOnline(RuleViolation):
    code = "not-bookable-online"


class InvalidTransition(RuleViolation):
    code = "invalid-transition"


class InvalidValue(RuleViolation):
    code = "invalid-value"


class Forbidden(DomainError):
    """The actor may see this object but not do this to it.

    Never raised for someone else's object: that is NotFound, so a forbidden
    object looks exactly like a missing one.
    """

    code = "forbidden"
