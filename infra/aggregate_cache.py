"""A per-process cache of aggregates' decoded events, caught up on every read.

Replaying an aggregate costs a round trip that fetches every event, and the
decoding of each. This cache keeps, per aggregate id, the events already
decoded (immutable values) and their version; a read then runs one statement
that returns only the events after the cached version, for any number of
aggregates at once. So a read is exactly as fresh as a full one: nothing is
ever answered from memory alone, and another process's appends (or this
one's, through any path) show up on the next read.

Each read also returns the row at the cached version itself (its position,
not its state): if that row is gone or is another row (the database was
restored behind this process's back), the entry is dropped and the aggregate
read whole, in a second round trip.

Events are cached only if every value they carry is immutable, so no
aggregate rebuilt from them can change what the next one is built from.
"""

import dataclasses
import datetime
import decimal
import enum
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from infra.codec import TypedMapper
from infra.eventstore import Connection
from infra.keyring import subjects_in
from infra.pgerrors import database_unavailable
from infra.schema import SCHEMA
from services.ports import Unavailable

DEFAULT_CAPACITY = 10_000
Source = asyncpg.Pool | Connection

# For each (id, cached version): the row at that version (position only, to
# check it is still the one cached) and every later row. Version 0: all rows.
_CATCH_UP = f"""
SELECT e.originator_id, e.originator_version, e.position,
       CASE WHEN e.originator_version > c.v THEN e.topic END,
       CASE WHEN e.originator_version > c.v THEN e.state END
FROM unnest($1::uuid[], $2::int[]) AS c(id, v)
JOIN {SCHEMA}.events e ON e.originator_id = c.id AND e.originator_version >= c.v
ORDER BY e.originator_id, e.originator_version
"""

_SCALARS = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    UUID,
    datetime.date,  # datetime.datetime too
    datetime.time,
    datetime.timedelta,
    datetime.tzinfo,
    decimal.Decimal,
    enum.Enum,
)


def frozen(value: object) -> bool:
    """Whether nothing reachable from `value` can be changed in place."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, tuple | frozenset):
        return all(frozen(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        return bool(params and params.frozen) and all(
            frozen(getattr(value, f.name)) for f in dataclasses.fields(value)
        )
    return False


def _event_frozen(event: Any) -> bool:
    return all(frozen(v) for v in vars(event).values())


@dataclass(frozen=True, slots=True)
class Entry:
    """An aggregate's events, version 1 to `version` in order.

    An item is a decoded domain event, or a StoredEvent not decoded yet (fed
    from a save: decoded on first read, by the same mapper a read uses).
    `anchor` is the log position of the event at `version` (0: not known
    yet, for events fed from a save).
    """

    events: tuple[Any, ...]
    anchor: int

    @property
    def version(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a read gives for one aggregate: its decoded events and last position."""

    events: tuple[Any, ...]
    position: int


class AggregateCache:
    """Bounded (least recently used first out), per process, never trusted blindly."""

    def __init__(self, mapper: TypedMapper, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.mapper = mapper
        self.capacity = capacity
        self._entries: OrderedDict[UUID, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, aggregate_id: object) -> bool:
        return aggregate_id in self._entries

    def version(self, aggregate_id: UUID) -> int:
        entry = self._entries.get(aggregate_id)
        return entry.version if entry is not None else 0

    async def load(self, source: Source, ids: Iterable[UUID]) -> dict[UUID, Loaded]:
        """Each aggregate that has events, caught up in one round trip (two if an
        entry no longer matches the log)."""
        wanted = list(dict.fromkeys(ids))
        loaded, stale = await self._catch_up(source, wanted)
        if stale:
            for aggregate_id in stale:
                self._entries.pop(aggregate_id, None)
            again, _ = await self._catch_up(source, stale)
            loaded.update(again)
        return loaded

    async def _catch_up(
        self, source: Source, ids: Sequence[UUID]
    ) -> tuple[dict[UUID, Loaded], list[UUID]]:
        if not ids:
            return {}, []
        cached = {i: self._entries.get(i) for i in ids}
        versions = [e.version if e is not None else 0 for e in cached.values()]
        try:
            rows = await source.fetch(_CATCH_UP, list(cached), versions)
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise
        ring = self.mapper.keyring
        if ring is not None and (subjects := subjects_in(r[4] for r in rows if r[4])):
            await ring.load(subjects)  # sealed fields decode with their keys (infra/keyring.py)
        by_id: dict[UUID, list[Any]] = {}
        for r in rows:
            by_id.setdefault(r[0], []).append(r)
        loaded: dict[UUID, Loaded] = {}
        stale: list[UUID] = []
        for aggregate_id, entry in cached.items():
            found = by_id.get(aggregate_id, [])
            result = self._merge(aggregate_id, entry, found)
            if result is None:
                stale.append(aggregate_id)
            elif result.events:
                loaded[aggregate_id] = result
        return loaded, stale

    def remembered(self, ids: Iterable[UUID]) -> dict[UUID, Loaded] | None:
        """Each aggregate as this process last knew it, without reading the log:
        None unless every one is cached. Possibly stale: for a write whose
        append checks the versions (infra.repository `relied_on`)."""
        wanted = list(dict.fromkeys(ids))
        entries = [(i, self._entries.get(i)) for i in wanted]
        if any(entry is None for _, entry in entries):
            return None
        loaded: dict[UUID, Loaded] = {}
        for aggregate_id, entry in entries:
            assert entry is not None
            pending = [e for e in entry.events if isinstance(e, StoredEvent)]
            if not pending:
                self._entries.move_to_end(aggregate_id)
                loaded[aggregate_id] = Loaded(entry.events, entry.anchor)
                continue
            # Events fed from a save: decoded now, by the mapper a read uses.
            fresh = [self.mapper.to_domain_event(e) for e in pending]
            if not all(_event_frozen(e) for e in fresh):
                self._entries.pop(aggregate_id, None)
                return None
            decoded = iter(fresh)
            events = tuple(next(decoded) if isinstance(e, StoredEvent) else e for e in entry.events)
            self._put(aggregate_id, Entry(events, entry.anchor))
            loaded[aggregate_id] = Loaded(events, entry.anchor)
        return loaded

    def forget(self, ids: Iterable[UUID]) -> None:
        """Drop these entries (a write on them lost a race: the next read reads the log)."""
        for aggregate_id in ids:
            self._entries.pop(aggregate_id, None)

    def _merge(self, aggregate_id: UUID, entry: Entry | None, rows: list[Any]) -> Loaded | None:
        """The cached events and the new rows as one aggregate (None: the entry is stale)."""
        version, last = 0, 0
        old: tuple[Any, ...] = ()
        if entry is not None:
            if not rows or rows[0][1] != entry.version or entry.anchor not in (0, rows[0][2]):
                return None
            version, last, old = entry.version, rows[0][2], entry.events
            rows = rows[1:]
        if any(r[1] != version + n for n, r in enumerate(rows, start=1)):
            return None  # a gap: never from one log, read it again whole
        new = [StoredEvent(aggregate_id, r[1], r[3], r[4]) for r in rows]
        # Only what is decoded now needs checking: a decoded event in the
        # entry passed when it was first remembered.
        fresh = [self.mapper.to_domain_event(e) for e in (*old, *new) if isinstance(e, StoredEvent)]
        decoded = iter(fresh)
        events = tuple(next(decoded) if isinstance(e, StoredEvent) else e for e in (*old, *new))
        if rows:
            # An aggregate's later versions always sit at later positions.
            last = rows[-1][2]
        if events:
            self._remember(aggregate_id, events, last, fresh)
        return Loaded(events, last)

    def _remember(
        self, aggregate_id: UUID, events: tuple[Any, ...], anchor: int, fresh: Sequence[Any]
    ) -> None:
        current = self._entries.get(aggregate_id)
        if current is not None and current.version > len(events):
            return  # a save fed newer events while this read was on its way
        if self.capacity == 0 or not all(_event_frozen(e) for e in fresh):
            self._entries.pop(aggregate_id, None)
            return
        self._put(aggregate_id, Entry(events, anchor))

    def _put(self, aggregate_id: UUID, entry: Entry) -> None:
        self._entries[aggregate_id] = entry
        self._entries.move_to_end(aggregate_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def saved(self, stored: Sequence[StoredEvent]) -> None:
        """Add a successful append's events, so the next read fetches nothing new.

        Only where they continue the cached events (or start an aggregate);
        otherwise the entry stays as it was and the next read catches up.
        """
        if self.capacity == 0:
            return
        by_id: dict[UUID, list[StoredEvent]] = {}
        for s in stored:
            by_id.setdefault(UUID(str(s.originator_id)), []).append(s)
        for aggregate_id, events in by_id.items():
            events.sort(key=lambda s: s.originator_version)
            entry = self._entries.get(aggregate_id)
            version = entry.version if entry is not None else 0
            first = events[0].originator_version
            if any(s.originator_version != first + n for n, s in enumerate(events)):
                continue
            if first == version + 1:
                old = entry.events if entry is not None else ()
                self._put(aggregate_id, Entry((*old, *events), 0))
            elif first <= version:
                # The log took these versions, so the entry is not this log's.
                self._entries.pop(aggregate_id, None)
