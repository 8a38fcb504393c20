"""What a read model is: its tables, and how each event changes them.

A projection is pure: given a domain event, it returns the SQL statements
that bring its tables up to date. The runner (infra/) executes them together
with the checkpoint in one transaction, so a batch is applied entirely or
not at all, and rebuilding means running the same projection into fresh
tables. Table names are passed in, so the same code fills live or shadow
tables.

PostgreSQL text cannot hold U+0000, nor can UTF-8 hold a lone surrogate, so
a string that carries one would stop the projection that binds it, and
events already in the log may carry them. `storable` turns each into U+FFFD
(the replacement character) and changes nothing else; the runner applies it
to every statement argument, and `as_json` to every string of a jsonb value.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

_json = msgspec.json.Encoder()
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_NUL_ESCAPE = b"\\u0000"


def storable(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def _storable_tree(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_tree(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): _storable_tree(v) for k, v in value.items()}
    return value


def as_json(value: Any) -> str:
    """jsonb parameters travel as text; jsonb refuses the escape \\u0000."""
    try:
        encoded = _json.encode(value)
    except UnicodeEncodeError:  # a lone surrogate somewhere inside
        encoded = _NUL_ESCAPE
    if _NUL_ESCAPE in encoded:  # may also be an escaped backslash before "u0000": harmless
        encoded = _json.encode(_storable_tree(msgspec.to_builtins(value)))
    return encoded.decode()


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
