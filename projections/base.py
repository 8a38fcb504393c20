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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

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


S = TypeVar("S")


def per_tables(build: Callable[[Mapping[str, str]], S]) -> Callable[[Mapping[str, str]], S]:
    """`build(t)` once per set of table names (live, shadow, an instance), then reused.

    A projection's SQL texts depend only on the table names; formatting them for
    every event cost more than running the projection's own logic.
    """
    built: dict[tuple[str, ...], S] = {}

    def get(t: Mapping[str, str]) -> S:
        names = tuple(t.values())
        found = built.get(names)
        if found is None:
            found = built[names] = build(t)
        return found

    return get


@dataclass(frozen=True)
class Op:
    """One change of a read model, for one event.

    A plain Op is one statement with its arguments, run as it is.

    A keyed Op (`key` set) is set-based: its SQL takes every argument as an
    array (`unnest($1::uuid[], …)`) and `args` are this event's elements, one
    row. The runner can then send the rows of many events as one statement
    (one round trip, one plan, one pass over the indexes) instead of one
    statement each. `key` names the row the Op writes and `reads` the rows of
    other tables it reads, each as (logical table, primary key); the runner
    reorders only Ops that share no such row with one written by the other,
    so a keyed Op must not read or write anything it does not declare. A
    plain Op is ordered against everything, as before.
    """

    sql: str
    args: tuple[Any, ...] = ()
    key: Hashable | None = None
    reads: tuple[Hashable, ...] = ()


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
    """A read model. Optional attributes the runner looks for:

    - `reads_ledger = True`: it is handed the access ledger's events too;
    - `handles`: the kinds (`kind(event)`, e.g. "Appointment.Booked") for which
      `apply` can return statements; the runner then only checks that events
      of other kinds decode, without building them or calling `apply`.
    """

    name: str
    tables: tuple[str, ...]

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        """CREATE statements for its tables (no IF NOT EXISTS: the runner decides)."""

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        """The statements that bring the tables up to date with one event."""
