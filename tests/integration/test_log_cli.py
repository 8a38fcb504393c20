"""`carnet log` streams the ledger's entries as JSON lines with the filters of
GET /ledger; a bad flag is a clear message and exit status 2, and an index
that cannot catch up is exit status 1, never a traceback."""

import json
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from domain.ledger import AccessRecord, Disclosure
from infra import access_index
from infra.cli import main
from infra.eventstore import EventStore
from infra.http import schemas as s
from infra.ledger import Ledger
from infra.projector import CHECKPOINTS
from tests.conftest import T0, Servers
from tests.integration.test_cli import run_cli

# (token, client ip, hours after T0): the stolen token is "t-1" away from 10.0.0.1.
ENTRIES = [
    ("t-1", "10.0.0.1", 0),
    ("t-1", "192.0.2.66", 1),
    ("t-2", "10.0.0.1", 2),
    ("t-1", "192.0.2.66", 25),
    ("t-1", "10.0.0.1", 26),
]


def carnet_log(db_url: str, servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    return run_cli("log", *args, env=env)


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    writer = Ledger(EventStore(pool))
    for n, (token, ip, hours) in enumerate(ENTRIES):
        await writer.record(
            AccessRecord(
                actor_kind="integration",
                actor_id="software-1",
                token_id=token,
                integration_id="software-1",
                action="read",
                resource_type="agenda",
                record_ids=(f"appt-{n}",),
                patient_ids=(f"patient-{n}",),
                items=(Disclosure(record_id=f"appt-{n}", patient_id=f"patient-{n}"),),
                fields=("start",),
                at=T0 + timedelta(hours=hours),
                client_ip=ip,
                as_of=n,
            )
        )
    await writer.close()
    yield pool


async def test_carnet_log_streams_the_matching_entries_as_json_lines(ledger, db_url, servers):
    # Nothing has projected the entries yet: the command catches the index up itself.
    done = carnet_log(
        db_url, servers, "--token", "t-1", "--not-client-ip", "10.0.0.1", "--from", "2026-12-01"
    )

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["sequence"], e["client_ip"]) for e in lines] == [
        (2, "192.0.2.66"),
        (4, "192.0.2.66"),
    ]
    assert set(lines[0]) == set(s.LedgerEntryOut.__struct_fields__)
    assert lines[0]["items"][0]["record_id"] == "appt-1"
    assert "Traceback" not in done.stderr

    one_day = carnet_log(db_url, servers, "--from", "2026-12-01", "--to", "2026-12-01")
    assert [json.loads(line)["sequence"] for line in one_day.stdout.splitlines()] == [1, 2, 3]


async def test_an_empty_window_is_refused_and_a_stopped_index_is_named(ledger, db_url, servers):
    backwards = carnet_log(db_url, servers, "--from", "2026-12-02", "--to", "2026-12-01")
    assert backwards.returncode == 2, backwards.stderr
    assert "--to must be after --from" in backwards.stderr

    await ledger.execute(
        f"UPDATE {CHECKPOINTS} SET state = 'stopped', error = 'a bug' WHERE name = $1",
        access_index.INDEX,
    )
    stopped = carnet_log(db_url, servers, "--token", "t-1")
    assert stopped.returncode == 1, stopped.stderr
    assert "access index is stopped" in stopped.stderr and "a bug" in stopped.stderr
    assert "Traceback" not in stopped.stderr and stopped.stdout == ""


@pytest.mark.parametrize(
    "flags",
    [
        ["--from", "yesterday"],
        ["--to", "2026-12-01T08:00:00"],  # no offset
        ["--outcome", "stolen"],
        ["--action", "peek"],
        ["--token", "a\x1b[31mb"],
        ["--user-agent", "x" * 201],
        ["--after", "three"],
    ],
)
def test_a_bad_flag_is_a_message_and_status_2(flags, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["log", *flags])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "carnet log: error: argument" in err and "Traceback" not in err
