"""msgspec behind the eventsourcing Mapper.

Encoding is plain msgspec JSON. Decoding is two-step, because upcasting
(`upcast_vN_vM`) works on the raw dict: decode untyped, let the Mapper upcast,
then convert the dict into the field types that the event class named by the
stored topic declares. One converter Struct is built per event class and
cached, like a reused typed Decoder.

How an event class may change, so that every event already stored still
decodes (tests/integration/test_schema_evolution.py decodes and projects a
fixture log in the shapes of each past release):

- A new field gets a default: in the `@event` method's signature (the library
  calls the method with it) or on the event dataclass (`= value` or
  `field(default_factory=...)`). A stored event that lacks the field decodes
  with that default; the converter Struct carries the defaults of both.
- Any other change of shape (a rename, a new type, a field split) is a new
  version: an explicit event class with `class_version = N + 1` and a static
  `upcast_vN_vN+1(state)` that rewrites the stored dict of version N. The
  Mapper runs the upcasters in turn before the dict is typed here.
- Fields are never removed from a class while stored events still carry
  them; a stored key the class no longer declares is ignored.
"""

import copy
import functools
import inspect
import json
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, CanInitAggregate, decorated_funcs
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from domain.personal import data_subject, personal_fields, subject_of_event
from infra.keyring import KEYS, KeyNotLoaded, Keyring, is_envelope

_SKIP = {"originator_id", "originator_version", "originator_id_type"}
_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset)


class MsgspecTranscoder(Transcoder):
    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(dict[str, Any])

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError:
            # msgspec refuses a lone surrogate escape ("\ud800"), which it never
            # writes but another writer may have: the standard library reads it,
            # and projections make such text storable when they bind it.
            state = json.loads(data)
            if not isinstance(state, dict):
                raise
            return state


def _applier(event_cls: type) -> Callable[..., Any] | None:
    """The method the library calls with the event's fields (its defaults apply there)."""
    if event_cls in decorated_funcs:
        return decorated_funcs[event_cls]
    if issubclass(event_cls, CanInitAggregate):
        # A "created" event initialises the aggregate class it is nested in.
        owner: Any = sys.modules.get(event_cls.__module__)
        for part in event_cls.__qualname__.split(".")[:-1]:
            owner = getattr(owner, part, None)
        if isinstance(owner, type):
            aggregate_cls: Any = owner
            return aggregate_cls.__init__
    return None


def _defaults(event_cls: type) -> dict[str, Any]:
    """Field name -> msgspec default, from the method's signature then the dataclass."""
    values: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    applier = _applier(event_cls)
    if applier is not None:
        for name, param in inspect.signature(applier).parameters.items():
            if param.default is not inspect.Parameter.empty:
                values[name] = param.default
    if is_dataclass(event_cls):
        for f in fields(event_cls):
            if f.default is not MISSING:
                values[f.name] = f.default
                factories.pop(f.name, None)
            elif f.default_factory is not MISSING:
                factories[f.name] = f.default_factory
                values.pop(f.name, None)
    for name, value in values.items():
        if not isinstance(value, _IMMUTABLE):
            # A mutable default (a list, a value object) is copied for each event.
            factories[name] = functools.partial(copy.deepcopy, value)
    return {
        **{name: v for name, v in values.items() if name not in factories},
        **{name: msgspec.field(default_factory=f) for name, f in factories.items()},
    }


@cache
def state_type(event_cls: type) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(event_cls)
    # A personal field reads as None once its subject is erased (infra/keyring.py).
    for name in personal_fields(event_cls):
        hints[name] = hints[name] | None
    defaults = _defaults(event_cls)
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (name, hint, defaults[name]) if name in defaults else (name, hint)
        for name, hint in hints.items()
        if name not in _SKIP and typing.get_origin(hint) is not typing.ClassVar
    ]
    return msgspec.defstruct(f"{event_cls.__qualname__}State", spec, kw_only=True)


class TypedMapper(Mapper):
    """A Mapper whose domain events come back with their declared types.

    With a `keyring`, the personal fields of what it encodes are sealed
    under their subject's key (`stored_events` creates the keys first). Any
    TypedMapper opens sealed fields, with the keys the event store loaded.
    """

    def __init__(self, keyring: Keyring | None = None) -> None:
        super().__init__(transcoder=MsgspecTranscoder())
        self.keyring = keyring
        self._json = msgspec.json.Encoder()

    async def stored_events(self, aggregates: Sequence[Aggregate]) -> list[StoredEvent]:
        """The pending events of `aggregates`, encoded (their subjects' keys made first)."""
        pending = [(a, e) for a in aggregates for e in a.collect_events()]
        subjects = {a.id: data_subject(a) for a in aggregates}
        if self.keyring is not None:
            await self.keyring.ensure(
                {s for a, e in pending if personal_fields(type(e)) and (s := subjects[a.id])}
            )
        return [self.to_stored_event(e, subjects[a.id]) for a, e in pending]

    def to_stored_event(self, domain_event: Any, subject: UUID | None = None) -> StoredEvent:
        names = personal_fields(type(domain_event))
        if self.keyring is None or not names:
            return super().to_stored_event(domain_event)
        subject = subject or subject_of_event(domain_event)
        if subject is None:
            raise KeyNotLoaded(f"no data subject for {type(domain_event).__qualname__}")
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        for name in names:
            state[name] = KEYS.seal(subject, name, self._json.encode(state[name]))
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(type(domain_event)),
            state=self.transcoder.encode(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        state = vars(domain_event)
        for name in personal_fields(type(domain_event)):
            value = state.get(name)
            if is_envelope(value):
                plain = KEYS.open(typing.cast(dict[str, Any], value), name)
                state[name] = None if plain is None else msgspec.json.decode(plain)
        typed = msgspec.convert(
            {k: v for k, v in state.items() if k not in _SKIP},
            type=state_type(type(domain_event)),
            strict=False,
        )
        state.update(msgspec.structs.asdict(typed))
        return domain_event
