"""What a read model is: its tables, and how each event changes them.

A projection is pure: given a domain event, it returns the SQL statements
that bring its tables up to date. The runner (infra/) executes them together
with the checkpoint in one transaction, so a batch is applied entirely or
not at all, and rebuilding means running the same projection into fresh
tables. Table names are passed in, so the same code fills live or shadow
tables.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

_json = msgspec.json.Encoder()


def as_json(value: Any) -> str:
    """jsonb parameters travel as text."""
    return _json.encode(value).decode()


@dataclass(frozen=True)
class Op:
    sql: str
    args: tuple[Any, ...] = ()


class Tables(Mapping[str, str]):
    """Logical table name -> qualified physical name (live or shadow)."""

    def __init__(self, schema: str, names: Sequence[str], suffix: str = "") -> None:
        self._names = {n: f"{schema}.{n}{suffix}" for n in names}

    def __getitem__(self, key: str) -> str:
        return self._names[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        """CREATE statements for its tables (no IF NOT EXISTS: the runner decides)."""

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        """The statements that bring the tables up to date with one event."""
