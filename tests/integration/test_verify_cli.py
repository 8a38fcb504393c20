"""`carnet verify` on a real ledger: intact says so and exits 0; an entry
altered or deleted with SQL is named, and the command exits 1."""

import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from domain.ledger import LEDGER_ID, AccessRecord
from infra.eventstore import EventStore
from infra.ledger import Ledger, verify_ledger
from infra.schema import SCHEMA
from tests.conftest import Servers
from tests.integration.test_cli import run_cli

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def verify(db_url: str, servers: Servers) -> subprocess.CompletedProcess[str]:
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    return run_cli("verify", env=env)


@pytest.fixture
async def five_entries(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    ledger = Ledger(EventStore(pool))
    for n in range(1, 6):
        await ledger.record(
            AccessRecord(
                actor_kind="practitioner",
                actor_id=f"practitioner-{n}",
                action="read",
                resource_type="appointment",
                record_ids=(f"appointment-{n}",),
                patient_ids=(f"patient-{n}",),
                fields=("start",),
                at=T0 + timedelta(seconds=n),
                as_of=n,
            )
        )
    await ledger.close()
    yield pool


async def test_verify_says_an_untouched_ledger_is_intact_and_exits_0(five_entries, db_url, servers):
    done = verify(db_url, servers)

    assert done.returncode == 0, done.stderr
    assert "intact" in done.stdout and "5 entries" in done.stdout
    assert "Traceback" not in done.stderr


async def test_verify_names_the_entry_altered_with_sql_and_exits_1(five_entries, db_url, servers):
    await five_entries.execute(
        f"UPDATE {SCHEMA}.events SET state = convert_to(replace("
        "convert_from(state, 'UTF8'), 'patient-3', 'patient-4'), 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = 3",
        LEDGER_ID,
    )
    assert (await verify_ledger(five_entries)) is not None  # the edit did change the record

    done = verify(db_url, servers)

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "TAMPERED" in done.stdout
    assert "#3 (altered)" in done.stdout
    assert "Traceback" not in done.stderr


async def test_verify_names_the_entry_deleted_with_sql_and_exits_1(five_entries, db_url, servers):
    await five_entries.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version = 2",
        LEDGER_ID,
    )

    done = verify(db_url, servers)

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "#2 (deleted)" in done.stdout


def anchor(db_url: str, servers: Servers, file: str) -> subprocess.CompletedProcess[str]:
    env = {
        "CARNET_DATABASE_URL": db_url,
        "CARNET_NATS_URL": servers.nats_url,
        "CARNET_LEDGER_ANCHOR_FILE": file,
    }
    return run_cli("anchor", env=env)


async def test_an_anchor_catches_the_tail_cut_off_which_the_chain_alone_cannot(
    five_entries, db_url, servers, tmp_path
):
    file = tmp_path / "anchors.jsonl"
    done = anchor(db_url, servers, str(file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("anchor #1: ") and str(file) in done.stdout
    assert len(file.read_text().splitlines()) == 1
    await five_entries.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version = 5",
        LEDGER_ID,
    )
    assert (await verify_ledger(five_entries)) is None  # the chain itself is still whole

    done = verify(db_url, servers)

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "TAMPERED" in done.stdout
    assert "Traceback" not in done.stderr


async def test_the_anchor_file_catches_the_whole_ledger_rewritten(
    five_entries, db_url, servers, tmp_path
):
    file = tmp_path / "anchors.jsonl"
    assert anchor(db_url, servers, str(file)).returncode == 0
    # Everything in the database goes, anchors included: what is left is
    # consistent on its own, and only the copy outside tells.
    await five_entries.execute(
        f"DELETE FROM {SCHEMA}.events WHERE topic LIKE 'domain.ledger:%'",
    )
    alone = verify(db_url, servers)
    assert alone.returncode == 0, alone.stdout

    done = run_cli(
        "verify",
        "--anchors",
        str(file),
        env={"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url},
    )

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "TAMPERED" in done.stdout
    assert "Traceback" not in done.stderr


async def test_verify_refuses_an_anchor_file_that_is_not_there(five_entries, db_url, servers):
    done = run_cli(
        "verify",
        "--anchors",
        "/nonexistent/anchors.jsonl",
        env={"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url},
    )
    assert done.returncode == 1
    assert "anchor file" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr
