"""The lean decoder (infra/decoder.py) gives what the TypedMapper gives."""

import json
from pathlib import Path
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from infra.codec import TypedMapper
from infra.decoder import Decoder


def test_the_lean_decoder_gives_what_the_mapper_gives_for_every_stored_shape():
    """Every event type, in the shapes of each past release (tests/fixtures), and a
    lone surrogate escape another writer may have stored."""
    mapper, decoder = TypedMapper(), Decoder()
    fixtures = sorted((Path(__file__).parent.parent / "fixtures").glob("events-v*.jsonl"))
    stored = [
        StoredEvent(
            UUID(r["originator_id"]), r["originator_version"], r["topic"], r["state"].encode()
        )
        for path in fixtures
        for r in map(json.loads, path.read_text().splitlines())
    ]
    assert len(fixtures) >= 2 and len(stored) > 60
    odd = json.loads(fixtures[-1].read_text().splitlines()[0])
    state = json.loads(odd["state"])
    state["name"] = "\ud800"
    stored.append(
        StoredEvent(UUID(odd["originator_id"]), 1, odd["topic"], json.dumps(state).encode())
    )
    for event in stored:
        expected, got = mapper.to_domain_event(event), decoder.decode(event)
        assert type(got) is type(expected)
        declared = {k: v for k, v in vars(expected).items() if k in vars(got)}
        assert vars(got) == declared, event.topic
    # (and most took the short road: one typed decoder per topic)
    assert sum(decoder._for(e.topic) is not None for e in stored) > len(stored) / 2
