"""The ledger's hash chain names the first altered, deleted, inserted or reordered entry."""

import dataclasses
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.ledger import (
    GENESIS,
    LEDGER_ID,
    AccessRecord,
    AccessRecorded,
    Entry,
    Finding,
    canonical_bytes,
    chain_hash,
    link,
    verify,
)
from infra.codec import TypedMapper

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def access(n: int) -> AccessRecord:
    return AccessRecord(
        actor_kind="patient",
        actor_id=f"actor-{n}",
        action="read",
        resource_type="appointment",
        record_ids=(f"appointment-{n}",),
        patient_ids=(f"patient-{n}",),
        fields=("start", "practitioner"),
        at=T0 + timedelta(seconds=n),
        request_id=f"request-{n}",
    )


def chain(n: int) -> list[Entry]:
    records = [access(i) for i in range(1, n + 1)]
    return [
        Entry(version, record, prev, digest)
        for version, (record, (prev, digest)) in enumerate(
            zip(records, link(GENESIS, records), strict=True), start=1
        )
    ]


def renumbered(entries: list[Entry]) -> list[Entry]:
    return [e._replace(version=v) for v, e in enumerate(entries, start=1)]


def forged(after: Entry | None) -> Entry:
    """A well-made fake: it links properly to the entry it is put after."""
    record = dataclasses.replace(access(999), actor_id="intruder")
    prev = after.hash if after else GENESIS
    return Entry(0, record, prev, chain_hash(prev, record))


def test_an_intact_chain_has_no_finding():
    assert verify(chain(10)) is None
    assert verify([]) is None


def test_a_changed_record_is_reported_as_altered():
    entries = chain(10)
    entries[4] = entries[4]._replace(record=dataclasses.replace(entries[4].record, fields=()))
    assert verify(entries) == Finding("altered", 5, "its record does not match its hash")


def test_a_missing_entry_is_reported_as_deleted_whether_or_not_the_rest_were_renumbered():
    entries = chain(10)
    gap = entries[:3] + entries[4:]
    assert verify(gap) == Finding("deleted", 4, "missing: 4")
    finding = verify(renumbered(gap))
    assert finding is not None and (finding.kind, finding.version) == ("deleted", 4)


def test_a_missing_first_entry_is_reported_as_deleted():
    entries = chain(5)
    for tampered in (entries[1:], renumbered(entries[1:])):
        finding = verify(tampered)
        assert finding is not None and (finding.kind, finding.version) == ("deleted", 1)


def test_a_forged_entry_slipped_into_the_middle_is_reported_as_inserted():
    entries = chain(10)
    tampered = renumbered([*entries[:6], forged(entries[5]), *entries[6:]])
    finding = verify(tampered)
    assert finding is not None and (finding.kind, finding.version) == ("inserted", 7)


def test_a_forged_entry_that_links_nowhere_is_still_reported_as_inserted():
    entries = chain(10)
    fake = forged(None)._replace(prev_hash="f" * 64)
    fake = fake._replace(hash=chain_hash(fake.prev_hash, fake.record))
    finding = verify(renumbered([*entries[:6], fake, *entries[6:]]))
    assert finding is not None and (finding.kind, finding.version) == ("inserted", 7)


def test_two_swapped_entries_are_reported_as_reordered_at_the_first():
    entries = chain(10)
    entries[3], entries[4] = entries[4], entries[3]
    finding = verify(renumbered(entries))
    assert finding is not None and (finding.kind, finding.version) == ("reordered", 4)


def test_only_the_first_of_several_tamperings_is_named():
    entries = chain(10)
    entries[7] = entries[7]._replace(record=access(1))
    del entries[2]
    assert verify(entries) == Finding("deleted", 3, "missing: 3")


def test_the_hash_leaves_out_fields_at_their_default_so_new_fields_keep_old_hashes():
    bare = AccessRecord(
        actor_kind="patient", actor_id="a", action="read", resource_type="agenda", at=T0
    )
    assert b"on_behalf_of" not in canonical_bytes(bare)
    assert chain_hash(GENESIS, bare) != chain_hash(
        GENESIS, dataclasses.replace(bare, purpose="billing")
    )


def test_an_access_record_refuses_unknown_actions_and_naive_times():
    with pytest.raises(ValueError, match="action"):
        dataclasses.replace(access(1), action="peek")
    with pytest.raises(ValueError, match="timezone"):
        dataclasses.replace(access(1), at=datetime(2026, 12, 1))


def test_a_stored_entry_decodes_back_to_the_same_typed_event_and_hash():
    mapper = TypedMapper()
    record = dataclasses.replace(access(1), on_behalf_of=str(uuid4()), as_of=42)
    event = AccessRecorded(
        originator_id=LEDGER_ID,
        originator_version=1,
        timestamp=T0,
        record=record,
        prev_hash=GENESIS,
        hash=chain_hash(GENESIS, record),
    )
    back = mapper.to_domain_event(mapper.to_stored_event(event))
    assert back == event
    assert isinstance(back.record.record_ids, tuple)
    assert chain_hash(back.prev_hash, back.record) == event.hash


@given(st.integers(3, 30), st.data())
def test_every_single_tampering_inside_a_chain_is_named_with_its_version(n, data):
    entries = chain(n)
    k = data.draw(st.integers(1, n - 1), label="version")  # the tail is not covered by the chain
    j = data.draw(st.integers(k + 1, n), label="swapped with")
    i = k - 1

    altered = list(entries)
    altered[i] = altered[i]._replace(record=access(1000))
    deleted = renumbered(entries[:i] + entries[i + 1 :])
    inserted = renumbered([*entries[:i], forged(entries[i - 1] if i else None), *entries[i:]])
    reordered = list(entries)
    reordered[i], reordered[j - 1] = reordered[j - 1], reordered[i]

    for tampered, kind in [
        (altered, "altered"),
        (deleted, "deleted"),
        (inserted, "inserted"),
        (renumbered(reordered), "reordered"),
    ]:
        finding = verify(tampered)
        assert finding is not None and (finding.kind, finding.version) == (kind, k), kind
