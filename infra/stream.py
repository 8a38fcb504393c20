"""The stream's side of the relay: what a message holds and where the stream ends.

Shared by the relay (infra/relay.py), which writes the stream, and the
NATS-fed projection workers (infra/nats_worker.py), which read it.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from infra.eventstore import Checkpoint, RecordedEvent

log = logging.getLogger("carnet.stream")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One log event on the wire. Fields added later get defaults."""

    position: int
    tx: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    recorded_at: datetime
    metadata: dict[str, Any] = {}
    # The event before this one in log order; None in messages from before the
    # chain existed (unknown, not a hole). (0, 0) before the log's first event.
    prev_tx: int | None = None
    prev_position: int | None = None

    @classmethod
    def of(cls, e: RecordedEvent, previous: Checkpoint | None = None) -> "Envelope":
        return cls(
            prev_tx=None if previous is None else previous.tx,
            prev_position=None if previous is None else previous.position,
            position=e.position,
            tx=e.tx,
            originator_id=e.originator_id,
            originator_version=e.originator_version,
            topic=e.topic,
            state=e.state,
            recorded_at=e.recorded_at,
            metadata=e.metadata,
        )

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tx, self.position)

    @property
    def previous(self) -> Checkpoint | None:
        if self.prev_tx is None or self.prev_position is None:
            return None
        return Checkpoint(self.prev_tx, self.prev_position)

    def recorded(self) -> RecordedEvent:
        return RecordedEvent(
            self.position,
            self.tx,
            self.originator_id,
            self.originator_version,
            self.topic,
            self.state,
            self.recorded_at,
            self.metadata,
        )


encode_envelope = msgspec.msgpack.Encoder().encode
decode_envelope = msgspec.msgpack.Decoder(Envelope).decode


@dataclass(frozen=True)
class StreamNames:
    stream: str = "CARNET"
    duplicate_window: float = 120.0  # seconds; JetStream's default
    # Copies JetStream keeps of each message (1, or 3 or 5 on a cluster); set when the
    # stream is created, so an existing stream keeps its own (see ensure_stream).
    replicas: int = 1

    @property
    def prefix(self) -> str:
        return self.stream.lower()

    def subject(self, topic: str) -> str:
        """'domain.agenda:Appointment.Booked' -> 'carnet.Appointment.Booked'."""
        return f"{self.prefix}.{topic.rsplit(':', 1)[-1]}"

    @property
    def all_subjects(self) -> str:
        return f"{self.prefix}.>"


async def ensure_stream(js: JetStreamContext, names: StreamNames) -> None:
    """Create the stream if it does not exist; leave an existing one as it is.

    Only a stream that is not there is created: a cluster that cannot answer
    (no leader for a moment) raises, rather than meet an add_stream that might
    clash with the stream's real configuration. An existing stream with other
    replicas than asked keeps them (changing them is an operator's `nats stream
    edit`); the relay says so.
    """
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        await js.add_stream(
            name=names.stream,
            subjects=[names.all_subjects],
            duplicate_window=names.duplicate_window,
            num_replicas=names.replicas,
        )
        return
    held = info.config.num_replicas or 1
    if held != names.replicas:
        log.warning(
            "stream %s has %s replicas, not the %s asked for; it keeps them",
            names.stream,
            held,
            names.replicas,
        )


@dataclass(frozen=True)
class Tail:
    """Where the stream ends: its last sequence and the log event stored there."""

    seq: int = 0
    at: Checkpoint = field(default_factory=Checkpoint)


class StreamMoved(Exception):
    """JetStream refused a message: the stream does not end where this relay thought.

    Another relay published meanwhile, or a message before it was lost; either
    way the relay must re-read the stream before it publishes again.
    """


async def stream_tail(js: JetStreamContext, names: StreamNames) -> tuple[int, Checkpoint | None]:
    """The stream's last sequence and the event stored there (None if it holds nothing)."""
    info = await js.stream_info(names.stream)
    if not info.state.messages:
        return info.state.last_seq, None
    try:
        message = await js.get_msg(names.stream, seq=info.state.last_seq)
    except NotFoundError:  # deleted: the last message still there is where to go on from
        message = await js.get_msg(names.stream, subject=names.all_subjects)
    return info.state.last_seq, decode_envelope(message.data or b"").checkpoint
