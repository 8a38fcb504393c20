"""Stored events keep decoding while their classes evolve, and whatever a
projection binds can be stored by PostgreSQL.

The event classes below exist only here: each plays a class of domain/ on the
day it gains a field or changes shape, against state stored before that day.
"""

import json
from dataclasses import field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from domain.values import Motive
from infra.codec import MsgspecTranscoder, TypedMapper
from projections.base import as_json, storable

WHEN = "2026-12-01T07:00:00+00:00"


class Note(Aggregate):
    """Today's shape of a test-only aggregate; its old events lack every defaulted field."""

    @event("Opened")
    def __init__(self, title: str, pinned: bool = False) -> None:
        self.title = title
        self.pinned = pinned

    @event("Written")
    def write(self, text: str, priority: int = 0, tags: tuple[str, ...] = ()) -> None:
        self.text, self.priority, self.tags = text, priority, tags

    class Labelled(Aggregate.Event):
        label: str
        seen_by: list[str] = field(default_factory=list)

    @event(Labelled)
    def label(self, label: str, seen_by: list[str]) -> None:
        self.labels = [label, *seen_by]

    class Moved(Aggregate.Event):
        """v1 stored `destination` as a folder name; v2 keeps the folder's id."""

        class_version = 2
        folder_id: UUID

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["folder_id"] = str(FOLDERS[state.pop("destination")])

    @event(Moved)
    def move(self, folder_id: UUID) -> None:
        self.folder_id = folder_id

    class Motivated(Aggregate.Event):
        motive: Motive


FOLDERS = {"inbox": uuid4()}


def stored(cls: type, version: int, state: dict[str, Any], note: UUID | None = None) -> StoredEvent:
    """An event as a log written before today holds it (state as it was then)."""
    data = MsgspecTranscoder().encode({"timestamp": WHEN, **state})
    return StoredEvent(note or uuid4(), version, get_topic(cls), data)


def test_a_created_event_stored_before_its_defaulted_field_existed_decodes_with_the_default():
    opened = TypedMapper().to_domain_event(
        stored(Note.Opened, 1, {"originator_topic": get_topic(Note), "title": "t"})
    )
    assert opened.pinned is False
    assert opened.timestamp == datetime(2026, 12, 1, 7, tzinfo=UTC)
    note = opened.mutate(None)
    assert (note.title, note.pinned) == ("t", False)


def test_an_event_stored_before_its_method_gained_defaulted_parameters_decodes_with_them():
    written = TypedMapper().to_domain_event(stored(Note.Written, 2, {"text": "hello"}))
    assert (written.text, written.priority, written.tags) == ("hello", 0, ())


def test_a_default_factory_of_an_event_class_fills_a_missing_field_afresh_each_time():
    mapper = TypedMapper()
    first = mapper.to_domain_event(stored(Note.Labelled, 3, {"label": "urgent"}))
    second = mapper.to_domain_event(stored(Note.Labelled, 3, {"label": "later"}))
    assert first.seen_by == [] and second.seen_by == []
    assert first.seen_by is not second.seen_by


def test_a_value_object_stored_before_it_gained_a_defaulted_field_decodes_with_it():
    motivated = TypedMapper().to_domain_event(
        stored(Note.Motivated, 4, {"motive": {"id": "a", "name": "A", "duration_minutes": 20}})
    )
    assert motivated.motive == Motive("a", "A", 20, online=True)


def test_an_old_version_is_upcast_then_typed_and_the_new_version_round_trips():
    mapper = TypedMapper()
    moved = mapper.to_domain_event(stored(Note.Moved, 5, {"destination": "inbox"}))
    assert moved.folder_id == FOLDERS["inbox"] and isinstance(moved.folder_id, UUID)
    # Written today: stored with its version, read back without upcasting.
    again = mapper.to_stored_event(moved)
    assert json.loads(again.state)["class_version"] == 2
    assert mapper.to_domain_event(again).folder_id == FOLDERS["inbox"]


def test_today_s_events_round_trip_through_the_mapper_with_their_types():
    mapper = TypedMapper()
    note = Note(title="t")
    note.write("hi", priority=2, tags=("a",))
    note.move(FOLDERS["inbox"])
    events = [mapper.to_domain_event(mapper.to_stored_event(e)) for e in note.collect_events()]
    assert [type(e) for e in events] == [Note.Opened, Note.Written, Note.Moved]
    assert events[1].tags == ("a",) and events[2].folder_id == FOLDERS["inbox"]


def test_a_lone_surrogate_escape_in_stored_json_still_decodes():
    # msgspec writes no such escape, but no stored byte should make a log unreadable.
    data = b'{"timestamp":"' + WHEN.encode() + b'","text":"a\\ud800b"}'
    written = TypedMapper().to_domain_event(StoredEvent(uuid4(), 2, get_topic(Note.Written), data))
    assert written.text == "a\ud800b"


def test_nul_and_lone_surrogates_become_the_replacement_character_and_nothing_else_changes():
    assert storable("x\x00y\x00") == "x\ufffdy\ufffd"
    assert storable("a\ud800b\udfff") == "a\ufffdb\ufffd"
    for fine in ("", "plain", "Zoë, 東京, 😀, tab\tand\nnewline"):
        assert storable(fine) is fine


def test_jsonb_parameters_never_hold_a_nul_escape_or_a_lone_surrogate():
    motive = json.loads(as_json(Motive("a", "Con\x00sult", 20)))
    assert motive == {"id": "a", "name": "Con\ufffdsult", "duration_minutes": 20, "online": True}
    assert json.loads(as_json({"k\x00": ["a\ud800"]})) == {"k\ufffd": ["a\ufffd"]}
    # A backslash followed by "u0000" is text, not a NUL: left as it is.
    assert json.loads(as_json({"k": "\\u0000"})) == {"k": "\\u0000"}
    assert msgspec.json.decode(as_json([1, "ok"])) == [1, "ok"]
