"""Crypto-shredding (infra/keyring.py): personal fields are stored sealed under
their data subject's key, and read back as erased (None) once it is destroyed.

Against the real PostgreSQL: the raw bytes of the log never hold the
plaintext, a process that has never seen the key reads the erased fields
without an exception, and a wrong or missing key-encryption key stops the
start with a message saying what to do.
"""

import base64
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from domain import agenda
from domain.agenda import AgendaDay
from domain.credentials import Token
from domain.directory import Establishment, Patient, Practitioner
from domain.values import Motive, Sex, Source
from infra.bootstrap import close_pool, open_pool
from infra.eventstore import EventStore
from infra.keyring import KEYS, KeyError_, SubjectErased, install, keyring_of, uninstall
from infra.migrations import _seal_earlier_events
from infra.repository import PostgresRepository
from infra.schema import SCHEMA
from infra.settings import Settings
from services.ports import Metadata
from tests.integration.db_support import empty_database

META = Metadata(actor_kind="admin", actor_id="crypto")
NAME, EMAIL, PHONE = "Zéphyrine-Unique", "zephyrine.unique@example.org", "+33 6 98 76 54 32"


def _patient() -> Patient:
    return Patient.register(
        first_name=NAME,
        last_name="Ödegaard",
        birth_date=date(1977, 7, 7),
        sex=Sex.FEMALE,
        email=EMAIL,
        phone=PHONE,
    )


async def _raw_log(pool: asyncpg.Pool) -> bytes:
    rows = await pool.fetch(f"SELECT state FROM {SCHEMA}.events ORDER BY position")
    return b"\n".join(bytes(r[0]) for r in rows)


def _forget_all_keys() -> None:
    """As a process that has never loaded a key (a fresh start)."""
    KEYS._keys.clear()


async def test_personal_fields_are_stored_sealed_and_read_back(pool: asyncpg.Pool) -> None:
    repo = PostgresRepository(EventStore(pool))
    patient = _patient()
    await repo.save([patient], META)
    raw = await _raw_log(pool)
    for text in (NAME, "Ödegaard", EMAIL, PHONE, "1977-07-07"):
        assert text.encode() not in raw
        assert text.encode("unicode_escape") not in raw
    assert b'"$s":"' + str(patient.id).encode() in raw

    _forget_all_keys()
    fresh = await PostgresRepository(EventStore(pool), cache_capacity=0).get(Patient, patient.id)
    assert fresh is not None
    assert (fresh.first_name, fresh.email, fresh.phone) == (NAME, EMAIL, PHONE)
    assert (fresh.birth_date, fresh.sex) == (date(1977, 7, 7), Sex.FEMALE)


async def test_a_shredded_subject_reads_as_erased_in_a_process_that_never_saw_the_key(
    pool: asyncpg.Pool,
) -> None:
    repo = PostgresRepository(EventStore(pool))
    patient, other = _patient(), _patient()
    await repo.save([patient, other], META)
    ring = keyring_of(pool)
    assert ring is not None
    await ring.shred(patient.id)

    for reader in ("this process", "a fresh process"):
        if reader == "a fresh process":
            _forget_all_keys()
        got = await PostgresRepository(EventStore(pool), cache_capacity=0).get(Patient, patient.id)
        assert got is not None, reader
        assert (got.first_name, got.last_name, got.email, got.phone) == (None,) * 4, reader
        assert (got.birth_date, got.sex) == (None, None), reader
        kept = await PostgresRepository(EventStore(pool), cache_capacity=0).get(Patient, other.id)
        assert kept is not None and kept.first_name == NAME, reader

    # Nothing new of theirs is ever written again, readable or not.
    assert got is not None
    got.change_contact_details("new@example.org", "+33 1 23 45 67 89")
    with pytest.raises(SubjectErased):
        await repo.save([got], META)
    wrapped = await pool.fetchval(
        f"SELECT wrapped FROM {SCHEMA}.subject_keys WHERE subject_id = $1", patient.id
    )
    assert wrapped is None


async def test_a_wrong_key_encryption_key_stops_the_start(db_url: str) -> None:
    # The database was made with the suite's key (tests/conftest.py).
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(KeyError_, match="not the one this database's personal data"):
        await open_pool(db_url, Settings(kek=other), schema="check")


async def test_no_key_encryption_key_stops_a_production_start(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARNET_KEK")
    with pytest.raises(KeyError_, match="no key-encryption key: set CARNET_KEK"):
        await open_pool(db_url, Settings(), schema="check")


async def test_a_key_given_twice_is_refused(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(os.environ["CARNET_KEK"])
    both = Settings(kek=os.environ["CARNET_KEK"], kek_file=str(path))
    with pytest.raises(KeyError_, match="both set"):
        await open_pool(db_url, both, schema="check")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64 at all!", "not base64"),
        (base64.b64encode(b"short").decode(), "32 bytes in base64"),
    ],
)
async def test_a_malformed_key_encryption_key_is_refused_by_name(
    db_url: str, text: str, message: str
) -> None:
    with pytest.raises(KeyError_, match=f"CARNET_KEK: .*{message}"):
        await open_pool(db_url, Settings(kek=text), schema="check")


async def test_the_right_key_from_a_file_opens_the_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kek"
    path.write_text(os.environ["CARNET_KEK"] + "\n")
    monkeypatch.delenv("CARNET_KEK")
    pool = await open_pool(db_url, Settings(kek_file=str(path)), schema="check")
    try:
        assert keyring_of(pool) is not None
    finally:
        await close_pool(pool)


async def test_the_demo_makes_its_key_once_owner_only_and_keeps_using_it(
    servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARNET_KEK")
    settings = Settings(data_dir=tmp_path / "demo")
    async with empty_database(servers.database_url, "demokek") as url:
        for _ in range(2):  # the first start makes the key, the second reads it
            pool = await open_pool(url, settings, schema="migrate")
            try:
                repo = PostgresRepository(EventStore(pool))
                patient = _patient()
                await repo.save([patient], META)
            finally:
                await close_pool(pool)
        kek = tmp_path / "demo" / "kek"
        assert kek.stat().st_mode & 0o777 == 0o600
        # The demo's key lost: the start says so, and makes no new key to lose data with.
        elsewhere = Settings(data_dir=tmp_path / "elsewhere")
        with pytest.raises(KeyError_, match="already encrypted: set CARNET_KEK"):
            await open_pool(url, elsewhere, schema="migrate")
        assert not (tmp_path / "elsewhere" / "kek").exists()
        with pytest.raises(KeyError_, match="not the one this database's personal data"):
            await open_pool(url, Settings(kek=base64.b64encode(os.urandom(32)).decode()))
        with pytest.raises(KeyError_, match="no key-encryption key"):
            await open_pool(url, Settings(), schema="check")


async def test_step_9_seals_the_personal_data_of_events_written_before_step_8(
    pool: asyncpg.Pool, servers
) -> None:
    # As a Carnet before crypto-shredding wrote them: in clear.
    ring = keyring_of(pool)
    assert ring is not None
    uninstall(pool)
    try:
        plain = PostgresRepository(EventStore(pool))
        place = Establishment.register("Cabinet", "1 rue A", "Paris")
        doctor = Practitioner.register("Dr A", "GP", place)
        doctor.add_motive(Motive("consultation", "Consultation", 20))
        patient = _patient()
        await plain.save([place, doctor, patient], META)
        patient.change_contact_details("new." + EMAIL, PHONE)
        day = AgendaDay(practitioner_id=doctor.id, day=date(2026, 12, 2))
        start = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
        appointment = agenda.book(
            day,
            patient_id=patient.id,
            establishment_id=place.id,
            motive_id="consultation",
            duration_minutes=20,
            start=start,
            end=start + timedelta(minutes=20),
            source=Source.PATIENT,
        )
        agenda.cancel(appointment, day, "Ödegaard-private-reason", Source.PATIENT)
        token = Token("00" * 32, "patient", patient.id, None, f"{NAME} phone", None)
        await plain.save([patient, day, appointment, token], META)
    finally:
        install(ring)
    before = await _raw_log(pool)
    assert NAME.encode() in before and b"private-reason" in before
    states = await pool.fetch(f"SELECT position, tx FROM {SCHEMA}.events ORDER BY position")

    await _seal_earlier_events(pool)
    after = await _raw_log(pool)
    for text in (NAME, "Ödegaard", EMAIL, PHONE, "1977-07-07", "private-reason"):
        assert text.encode() not in after, text
        assert text.encode("unicode_escape") not in after, text
    assert await pool.fetch(f"SELECT position, tx FROM {SCHEMA}.events ORDER BY position") == states
    _forget_all_keys()
    fresh = PostgresRepository(EventStore(pool), cache_capacity=0)
    got = await fresh.get(Patient, patient.id)
    assert got is not None and (got.first_name, got.email) == (NAME, "new." + EMAIL)
    cancelled = await fresh.get(agenda.Appointment, appointment.id)
    assert cancelled is not None and cancelled.cancellation_reason == "Ödegaard-private-reason"
    issued = await fresh.get(Token, token.id)
    assert issued is not None and issued.display_name == f"{NAME} phone"

    await _seal_earlier_events(pool)  # again: nothing left to seal, nothing changes
    assert await _raw_log(pool) == after
    await ring.shred(patient.id)
    _forget_all_keys()
    gone = await PostgresRepository(EventStore(pool), cache_capacity=0).get(Patient, patient.id)
    assert gone is not None and gone.first_name is None
