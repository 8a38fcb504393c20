"""msgspec behind the eventsourcing Mapper.

Encoding is plain msgspec JSON. Decoding is two-step, because upcasting
(`upcast_vN_vM`) works on the raw dict: decode untyped, let the Mapper upcast,
then convert the dict into the field types that the event class named by the
stored topic declares. One converter Struct is built per event class and
cached, like a reused typed Decoder.
"""

import typing
from functools import cache
from typing import Any

import msgspec
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder

_SKIP = {"originator_id", "originator_version", "originator_id_type"}


class MsgspecTranscoder(Transcoder):
    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(dict[str, Any])

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)


@cache
def state_type(event_cls: type) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(event_cls)
    fields = [
        (name, hint)
        for name, hint in hints.items()
        if name not in _SKIP and typing.get_origin(hint) is not typing.ClassVar
    ]
    return msgspec.defstruct(f"{event_cls.__qualname__}State", fields, kw_only=True)


class TypedMapper(Mapper):
    """A Mapper whose domain events come back with their declared types."""

    def __init__(self) -> None:
        super().__init__(transcoder=MsgspecTranscoder())

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        state = vars(domain_event)
        typed = msgspec.convert(
            {k: v for k, v in state.items() if k not in _SKIP},
            type=state_type(type(domain_event)),
            strict=False,
        )
        state.update(msgspec.structs.asdict(typed))
        return domain_event
