"""Breach scoping (issue 8): the use case, its result, and how it judges an actor."""

from services.scoping.entries import UNBOUNDED, Limits, ScopeTooLarge
from services.scoping.model import Scope, ScopeSelector
from services.scoping.service import Progress, ScopingService

__all__ = [
    "UNBOUNDED",
    "Limits",
    "Progress",
    "Scope",
    "ScopeSelector",
    "ScopeTooLarge",
    "ScopingService",
]
