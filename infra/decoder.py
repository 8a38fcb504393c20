"""Stored events to domain events for replays: the TypedMapper's result, by a shorter road.

`TypedMapper.to_domain_event` decodes the JSON into a dict, lets the Mapper
upcast it, then converts the dict into the event class's field types: two
passes over every value. A class that has never changed shape
(`class_version` 1) needs no upcasting, so here one typed msgspec Decoder per
topic decodes the bytes straight into that class's state Struct
(`infra.codec.state_type`, the same types and defaults) and the event is
built from its fields. Everything else takes the Mapper's road: classes with
upcasters, and states msgspec refuses (a lone surrogate escape that another
writer wrote; the Mapper's transcoder reads those), and every event when
the mapper enciphers or compresses, and classes with personal fields (sealed
under their subject's key, domain/personal.py), which the mapper opens.

`pages` streams the log up to a point for a replay, one page in memory (and
the next one on its way) whatever the log's length.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from domain.personal import personal_fields
from infra.codec import TypedMapper, state_type
from infra.deadlines import bounded
from infra.eventstore import Checkpoint, EventStore, RecordedEvent

PAGE = 5000


class Decoder:
    def __init__(self, mapper: TypedMapper | None = None) -> None:
        self.mapper = mapper or TypedMapper()
        # topic -> (event class, its state's decoder), or None: the Mapper's road
        self._typed: dict[str, tuple[type, msgspec.json.Decoder[Any]] | None] = {}

    def _for(self, topic: str) -> tuple[type, msgspec.json.Decoder[Any]] | None:
        if topic not in self._typed:
            cls = resolve_topic(topic)
            plain = self.mapper.cipher is None and self.mapper.compressor is None
            if not plain or getattr(cls, "class_version", 1) != 1 or personal_fields(cls):
                self._typed[topic] = None
            else:
                decoder = msgspec.json.Decoder(state_type(cls), strict=False)
                self._typed[topic] = (cls, decoder)
        return self._typed[topic]

    def decode(self, recorded: RecordedEvent | StoredEvent) -> Any:
        """The domain event, equal to what TypedMapper.to_domain_event gives."""
        typed = self._typed.get(recorded.topic) or self._for(recorded.topic)
        if typed is not None:
            cls, decoder = typed
            try:
                state = decoder.decode(recorded.state)
            except msgspec.DecodeError:
                pass  # e.g. "\ud800": the Mapper's transcoder falls back to the stdlib
            else:
                event: Any = object.__new__(cls)
                values = msgspec.structs.asdict(state)
                values["originator_id"] = recorded.originator_id
                values["originator_version"] = recorded.originator_version
                object.__setattr__(event, "__dict__", values)
                return event
        stored = recorded.stored() if isinstance(recorded, RecordedEvent) else recorded
        return self.mapper.to_domain_event(stored)

    def check(self, recorded: RecordedEvent | StoredEvent) -> None:
        """Raise what `decode` would raise for this event, without building it.

        For an event its reader ignores: an undecodable one still stops it, as
        when every event was decoded.
        """
        typed = self._typed.get(recorded.topic) or self._for(recorded.topic)
        if typed is not None:
            try:
                typed[1].decode(recorded.state)
            except msgspec.DecodeError:
                pass
            else:
                return
        self.decode(recorded)


class LeanMapper(TypedMapper):
    """A TypedMapper that decodes by the Decoder's road (for a Projector that replays)."""

    def __init__(self) -> None:
        super().__init__()
        self._decoder = Decoder(TypedMapper())

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self._decoder.decode(stored_event)


async def pages(
    store: EventStore,
    until: Checkpoint,
    after: Checkpoint | None = None,
    size: int = PAGE,
    deadline: float = 30.0,
) -> AsyncIterator[list[RecordedEvent]]:
    """The events after `after` up to `until` (in reading order), page by page.

    The next page is read while the caller works on this one. Until every
    transaction that could still commit below `until` has ended, pages come
    back empty: this waits for that, up to `deadline` seconds, and then for
    each page up to `deadline` too.
    """
    loop = asyncio.get_running_loop()
    gave_up_at = loop.time() + deadline

    def read(start: Checkpoint) -> "asyncio.Task[list[RecordedEvent]]":
        return asyncio.ensure_future(bounded(store.read_until(start, until, size), deadline))

    after = after or Checkpoint()
    if after >= until:
        return
    pending = read(after)
    try:
        while True:
            page = await pending
            if not page:  # the horizon has not passed `until` yet
                if loop.time() > gave_up_at:
                    raise TimeoutError(f"transactions below {until} are still open")
                await asyncio.sleep(0.05)
                pending = read(after)
                continue
            after = page[-1].checkpoint
            done = after >= until
            if not done:
                pending = read(after)
            yield page
            if done:
                return
    finally:
        pending.cancel()
