"""Erasure (GDPR Art. 17) through HTTP: `POST /patients/{id}/erasure`.

After it, the patient's name, phone, email and the reasons they typed appear
nowhere: not in a pg_dump of the whole database, not in a read model, not in
any message of the NATS stream, not in the server's logs (raw bytes are
searched, in every spelling the stores might use). The read models still
equal their rebuild, the ledger still verifies, and a replay to before the
erasure shows the fields as erased.
"""

import asyncio
import json
import logging
import subprocess
from uuid import UUID

import asyncpg
import nats
import pytest

from domain.directory import ERASED_NAME, Patient
from infra.commands.verify import verify_all
from infra.eventstore import EventStore
from infra.keyring import KEYS
from infra.ledger import verify_ledger
from infra.projector import Projector
from infra.relay import Relay
from infra.replay import PostgresPointInTime
from infra.repository import PostgresRepository
from infra.stream import StreamNames
from projections import all_projections
from services.actors import ActorKind
from tests.conftest import Servers
from tests.e2e.support import THURSDAY, WEDNESDAY, agenda, book, free_starts, ok, paris, problem
from tests.e2e.test_scope import carnet_scope, scope_over_http
from tests.integration.test_backup_restore import _client
from tests.integration.test_projections import dump
from tests.world import META, ROOT, World

FIRST, LAST = "Quirinella", "Vandersteenhoven"
EMAIL, PHONE = "quirinella.v@example.org", "+33 7 12 34 56 78"
REASON = "Grossesse-confidentielle-motif"
AGENT = "QuirinellaHandy/4.2"  # her phone's User-Agent, in the access ledger's entries
SECRETS = (FIRST, LAST, EMAIL, PHONE, REASON, AGENT)


def _spellings(text: str) -> list[bytes]:
    """How a store might hold the text: UTF-8, JSON-escaped, upper and lower case."""
    forms = {text, text.lower(), text.upper(), text.replace(" ", "")}
    out = []
    for f in forms:
        out += [f.encode(), f.encode("unicode_escape"), f.encode("utf-16-le")]
    return out


def _leaks(blob: bytes) -> list[str]:
    return [t for t in SECRETS if any(s in blob for s in _spellings(t))]


async def _quirinella(client, world: World, services) -> tuple[UUID, dict[str, str]]:
    """A patient with values found nowhere else, registered by the desk, with a token."""
    created = await ok(
        await client.post(
            "/patients",
            json={
                "first_name": FIRST,
                "last_name": LAST,
                "birth_date": "1984-04-04",
                "sex": "female",
                "email": EMAIL,
                "phone": PHONE,
            },
            headers=world.auth("staff"),
        ),
        201,
    )
    patient_id = UUID(created["id"])
    issued = await services.credentials.issue_token(
        ROOT, META, ActorKind.PATIENT, patient_id, None, label=f"{FIRST} {LAST}"
    )
    return patient_id, {"Authorization": f"Bearer {issued.secret}", "User-Agent": AGENT}


async def _book(client, world, auth, start) -> str:
    response = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "patient_id": str(auth["patient_id"]),
            "motive_id": "consultation",
            "start": start,
        },
        headers=auth["headers"],
    )
    return (await ok(response, 201))["id"]


async def _dump_all(db_url: str, pool: asyncpg.Pool) -> bytes:
    major = int(await pool.fetchval("SHOW server_version_num")) // 10000
    done = await asyncio.to_thread(
        subprocess.run,
        [_client("pg_dump", major), "--format=plain", "--dbname", db_url],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _stream_bytes(nc, names: StreamNames) -> bytes:
    js = nc.jetstream()
    info = await js.stream_info(names.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(names.stream, seq=seq)
        out.append((message.data or b"") + repr(message.headers).encode())
    return b"\n".join(out)


async def test_after_an_erasure_nothing_of_the_patient_is_readable_anywhere(
    client, world, services, pool, db_url, servers: Servers, stream_name, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG)
    patient_id, headers = await _quirinella(client, world, services)
    me = {"patient_id": patient_id, "headers": headers}
    past_reason = await _book(client, world, me, paris(WEDNESDAY, "09:00"))
    cancelled = await client.post(
        f"/appointments/{past_reason}/cancel", json={"reason": REASON}, headers=headers
    )
    await ok(cancelled)
    future = [
        await _book(client, world, me, paris(WEDNESDAY, "10:00")),
        await _book(client, world, me, paris(THURSDAY, "11:00")),
    ]
    seen = await ok(await client.get(f"/patients/{patient_id}", headers=world.auth("admin")))
    assert seen["first_name"] == FIRST
    # Her user agent: sealed in the log (the chain hashes the ciphertext), in clear
    # for the analyst who reads the ledger.
    raw = b"".join(bytes(r[0]) for r in await pool.fetch("SELECT state FROM carnet.events"))
    assert AGENT.encode() not in raw
    listed = await ok(
        await client.get(
            "/ledger", params={"actor_id": str(patient_id)}, headers=world.auth("analyst")
        )
    )
    assert listed["entries"] and {e["user_agent"] for e in listed["entries"]} == {AGENT}
    before_erasure = await services.read.store.last_position()

    erased = await ok(await client.post(f"/patients/{patient_id}/erasure", headers=headers))
    assert erased["erased"] is True and erased["already_erased"] is False
    assert sorted(erased["cancelled_appointments"]) == sorted(future)
    assert erased["tokens_revoked"] == 1

    # The patient is gone; their token with them; their times are free again.
    gone = await client.get(f"/patients/{patient_id}", headers=world.auth("admin"))
    await problem(gone, 410, "patient_id")
    assert (await client.get("/me/access-log", headers=headers)).status == 401
    assert [a for a in await agenda(client, world, WEDNESDAY) if a["id"] in future] == []
    whole = await ok(
        await client.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": WEDNESDAY},
            headers=world.auth("practitioner"),
        )
    )
    theirs = [a for a in whole["appointments"] if a["patient_id"] == str(patient_id)]
    assert len(theirs) == 2 and {a["status"] for a in theirs} == {"cancelled"}
    assert {a["patient_name"] for a in theirs} == {ERASED_NAME}
    again = await book(client, world, paris(WEDNESDAY, "10:00"), who="other_patient")
    await ok(again, 201)
    refused = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "patient_id": str(patient_id),
            "motive_id": "consultation",
            "start": paris(THURSDAY, "15:00"),
        },
        headers=world.auth("staff"),
    )
    assert refused.status in (404, 410)

    # A second request finishes nothing new and says so.
    repeat = await ok(
        await client.post(f"/patients/{patient_id}/erasure", headers=world.auth("admin"))
    )
    assert repeat["already_erased"] is True  # and the same account of what was done:
    assert sorted(repeat["cancelled_appointments"]) == sorted(future)
    assert repeat["tokens_revoked"] == 1

    # The NATS stream: the relay publishes the whole log, then every message is searched.
    names = StreamNames(stream_name)
    nc = await nats.connect(servers.nats_url)
    try:
        relay = Relay(pool, nc, names)
        head = await relay.store.head()
        for _ in range(200):
            await relay.catch_up()
            if await relay.checkpoint() == head:
                break
        assert await relay.checkpoint() == head
        assert _leaks(await _stream_bytes(nc, names)) == []
    finally:
        await nc.close()

    # Every read model equals its rebuild, in a process that never saw the key.
    KEYS._keys.clear()
    for projection in all_projections():
        projector = Projector(pool, projection)
        await projector.catch_up()
        live = await dump(pool, projector)
        await projector.rebuild()
        rebuilt = await dump(pool, projector)
        differ = {t: (set(live[t]) - set(rebuilt[t]), set(rebuilt[t]) - set(live[t])) for t in live}
        if rebuilt != live:
            pytest.fail(str((projection.name, {t: d for t, d in differ.items() if any(d)})))
        assert _leaks(repr(live).encode()) == [], projection.name

    # A replay to a position before the erasure: the fields read as erased.
    as_then = await PostgresRepository(EventStore(pool), cache_capacity=0).get(Patient, patient_id)
    assert as_then is not None and as_then.first_name is None
    assert before_erasure > 0
    then = await PostgresPointInTime(pool).contact(str(patient_id), before_erasure)
    assert then is not None and set(then.values()) == {None}
    assert await verify_ledger(pool) is None
    report = await verify_all(pool)  # what `carnet verify` checks: chains and anchors
    assert report.intact, report.lines()

    # A scope over the admin's token, whose read of her profile is in the window:
    # the record and the patient are reported, their values as erased.
    admin_token = str(world.actors["admin"].token_id)
    found = await scope_over_http(client, world, token_ids=[admin_token])
    records = {r["record_id"]: r for r in found["records"]}
    assert str(patient_id) in records
    read = [a for a in records[str(patient_id)]["accesses"] if a["values"]]
    assert read and {read[0]["values"].get("first_name"), read[0]["values"].get("email")} == {None}
    people = {p["patient_id"]: p for p in found["patients"]}
    assert set((people[str(patient_id)]["contact"] or {}).values()) <= {None}
    assert _leaks(json.dumps(found).encode()) == []
    assert await carnet_scope(pool, "--out", str(tmp_path), "--token", admin_token) == 0
    for artifact in tmp_path.iterdir():
        assert _leaks(artifact.read_bytes()) == [], artifact.name
    after = await ok(
        await client.get(
            "/ledger", params={"actor_id": str(patient_id)}, headers=world.auth("analyst")
        )
    )
    assert {(e["user_agent"], e["client_ip"]) for e in after["entries"]} == {("", "")}

    dumped = await _dump_all(db_url, pool)
    assert _leaks(dumped) == []
    assert _leaks("\n".join(r.getMessage() for r in caplog.records).encode()) == []


async def test_only_the_patient_or_an_admin_may_erase(client, world):
    for who in ("other_patient", "practitioner", "staff", "integration", "analyst"):
        response = await client.post(f"/patients/{world.patient}/erasure", headers=world.auth(who))
        assert response.status in (403, 404), who
    kept = await ok(await client.get(f"/patients/{world.patient}", headers=world.auth("admin")))
    assert kept["first_name"] == "Alice"


async def test_an_erased_patient_s_contact_details_cannot_be_set_again(client, world):
    await ok(await client.post(f"/patients/{world.patient}/erasure", headers=world.auth("admin")))
    response = await client.put(
        f"/patients/{world.patient}/contact",
        json={"email": "back@example.org", "phone": "+33 6 99 99 99 99"},
        headers=world.auth("admin"),
    )
    await problem(response, 410, "patient_id")


@pytest.mark.parametrize("bad", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
async def test_erasing_a_patient_that_does_not_exist_is_a_clear_404(client, world, bad):
    response = await client.post(f"/patients/{bad}/erasure", headers=world.auth("admin"))
    assert response.status in (400, 404)
    assert response.content_type == "application/problem+json"


async def test_bookings_racing_an_erasure_leave_nothing_booked_for_the_patient(client, world):
    """The desk books Alice into every free slot while she is erased twice at once:
    whatever went in before `Patient.Erased` is cancelled by the erasure, anything
    after is refused, and the two erasures agree."""
    starts = (await free_starts(client, world, WEDNESDAY, THURSDAY))[:24]
    assert len(starts) == 24

    async def desk_books(start: str) -> int:
        response = await book(client, world, start, who="staff", patient=world.patient)
        await response.read()
        return response.status

    async def erase(who: str) -> dict:
        await asyncio.sleep(0.01)
        response = await client.post(f"/patients/{world.patient}/erasure", headers=world.auth(who))
        return await ok(response)

    results = await asyncio.gather(*(desk_books(s) for s in starts), erase("admin"), erase("admin"))
    statuses, erasures = results[: len(starts)], results[len(starts) :]
    assert set(statuses) <= {201, 404, 410}, statuses
    assert sorted(e["already_erased"] for e in erasures) in (
        [False, True],
        [True, True],
        [False, False],
    )
    # Both answers give the erasure's whole account, whichever did the work.
    cancelled = erasures[0]["cancelled_appointments"]
    assert sorted(cancelled) == sorted(erasures[1]["cancelled_appointments"])
    assert len(cancelled) == len(set(cancelled))

    # Afterwards: the patient view holds nothing booked for her, and the time is free.
    listed = await ok(
        await client.get(f"/patients/{world.patient}/appointments", headers=world.auth("admin"))
    )
    assert [a for a in listed["appointments"] if a["status"] == "booked"] == []
    assert sorted(cancelled) == sorted(a["id"] for a in listed["appointments"])
    assert statuses.count(201) == len(cancelled)
    free = await ok(
        await client.get(
            f"/practitioners/{world.practitioner}/availability",
            params={"motive_id": "consultation", "from": WEDNESDAY, "to": THURSDAY},
            headers=world.auth("other_patient"),  # hers is revoked
        )
    )
    assert set(starts) <= {slot["start"] for slot in free["slots"]}


async def test_nothing_new_is_made_for_an_erased_patient_consent_or_reschedule(
    client, world, clock
):
    past = await ok(await book(client, world, paris(WEDNESDAY, "09:00")), 201)
    clock.advance(days=2)  # Friday: Wednesday's appointment has taken place, still "booked"
    erased = await ok(
        await client.post(f"/patients/{world.patient}/erasure", headers=world.auth("admin"))
    )
    assert erased["cancelled_appointments"] == []  # only those still to come
    consent = await client.post(
        f"/patients/{world.patient}/consents",
        json={"establishment_id": str(world.other_establishment)},
        headers=world.auth("admin"),
    )
    await problem(consent, 410, "patient_id")
    moved = await client.post(
        f"/appointments/{past['id']}/reschedule",
        json={"start": "2026-12-09T09:00:00Z"},
        headers=world.auth("staff"),
    )
    await problem(moved, 410, "patient_id")
