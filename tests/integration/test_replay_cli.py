"""`carnet replay`: an aggregate and a read model as they stood at a past point,
and nothing left behind (no checkpoint row, no schema) however the run ends."""

import argparse
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from infra.commands import replay
from infra.projector import CHECKPOINTS
from infra.scratch import PREFIX
from tests.conftest import Servers
from tests.e2e.support import WEDNESDAY, ok, paris
from tests.integration.test_cli import run_cli
from tests.world import World


async def scratch_schemas(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", PREFIX
    )
    return [r[0] for r in rows]


async def checkpoints(pool: asyncpg.Pool) -> list[str]:
    return [r[0] for r in await pool.fetch(f"SELECT name FROM {CHECKPOINTS} ORDER BY name")]


async def booked_then_cancelled(client: TestClient, world: World, pool: asyncpg.Pool) -> Any:
    """An appointment booked, then cancelled: (its id, the log position after each)."""
    body = {
        "practitioner_id": str(world.practitioner),
        "motive_id": "consultation",
        "start": paris(WEDNESDAY, "09:00"),
    }
    booked = await ok(
        await client.post("/appointments", json=body, headers=world.auth("patient")), 201
    )
    at_booking = await pool.fetchval("SELECT max(position) FROM carnet.events")
    cancel = await client.post(
        f"/appointments/{booked['id']}/cancel", json={}, headers=world.auth("patient")
    )
    await ok(cancel)
    await ok(  # the read model has the cancellation too
        await client.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": WEDNESDAY},
            headers=world.auth("practitioner"),
        )
    )
    return booked["id"], at_booking


async def test_replay_prints_an_aggregate_and_a_read_model_as_they_stood(
    client: TestClient, world: World, pool: asyncpg.Pool, db_url: str, servers: Servers
):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    appointment_id, at_booking = await booked_then_cancelled(client, world, pool)
    live = await checkpoints(pool)

    then = run_cli("replay", "--at", str(at_booking), "--aggregate", appointment_id, env=env)
    assert then.returncode == 0, then.stderr
    state = json.loads(then.stdout)
    assert state["type"] == "Appointment" and state["position"] <= at_booking
    assert state["state"]["status"] == "booked"
    assert state["state"]["patient_id"] == str(world.patient)
    now = datetime.now(UTC).isoformat()
    latest = run_cli("replay", "--at", now, "--aggregate", appointment_id, env=env)
    assert json.loads(latest.stdout)["state"]["status"] == "cancelled", latest.stderr

    dumped = run_cli(
        "replay",
        *("--at", str(at_booking), "--read-model", "agenda", "--dump", "appointments"),
        env=env,
    )
    assert dumped.returncode == 0, dumped.stderr
    (row,) = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert (row["id"], row["status"], row["patient_name"]) == (
        appointment_id,
        "booked",
        "Alice Test",
    )
    assert "appointments: 1 rows" in dumped.stderr and PREFIX in dumped.stderr
    kept = run_cli("replay", "--at", now, "--read-model", "agenda", "--keep", "0", env=env)
    assert kept.returncode == 0, kept.stderr
    assert "appointments: 1 rows" in kept.stdout and "dropped schema" in kept.stdout

    # Nothing it built shows up anywhere.
    assert await scratch_schemas(pool) == []
    assert await checkpoints(pool) == live
    status = run_cli("projections", "status", env=env)
    assert PREFIX not in status.stdout and "replay" not in status.stdout


async def test_a_run_that_dies_leaves_a_schema_the_next_run_drops(
    client: TestClient, world: World, pool: asyncpg.Pool, db_url: str, servers: Servers
):
    env = {**os.environ, "CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    await booked_then_cancelled(client, world, pool)
    live = await checkpoints(pool)
    head = str(await pool.fetchval("SELECT max(position) FROM carnet.events"))
    args = [sys.executable, "-m", "infra.cli", "replay", "--at", head, "--read-model"]

    def kept(name: str) -> "subprocess.Popen[str]":
        process = subprocess.Popen(
            [*args, name, "--keep", "60"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:  # the schema is built once it says so
            if line.startswith("kept"):
                return process
        process.stdout.close()
        raise AssertionError(f"exit {process.wait()}")

    # Ctrl-C ends the wait and drops the schema.
    interrupted = kept("directory")
    assert len(await scratch_schemas(pool)) == 1
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=30) == 0
    assert "dropped schema" in interrupted.communicate()[0]
    assert await scratch_schemas(pool) == []
    # A kill leaves it (the run had no chance), with no checkpoint row…
    killed = kept("patient_view")
    killed.kill()
    killed.communicate(timeout=30)
    assert len(await scratch_schemas(pool)) == 1
    assert await checkpoints(pool) == live
    # …and the next run drops it.
    done = run_cli("replay", "--at", head, "--read-model", "agenda", "--keep", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert await scratch_schemas(pool) == []


def parsed(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay.add(parser.add_subparsers(dest="command"))
    return parser.parse_args(["replay", *args])


async def test_bad_input_is_refused_with_status_2_and_no_traceback(
    world: World, pool: asyncpg.Pool, db_url: str, servers: Servers, capsys: Any
):
    patient = str(world.patient)
    cases = [
        (("--at", "yesterday", "--aggregate", patient), "--at"),
        (("--at", "2026-12-01T08:00:00", "--aggregate", patient), "--at"),
        (("--at", "0", "--aggregate", patient), "--at"),
        (("--at", "9" * 30, "--aggregate", patient), "--at"),
        (("--at", "99999999", "--aggregate", patient), "past the log's head"),
        (("--at", "5", "--aggregate", "not-a-uuid\x01"), "--aggregate"),
        (("--at", "5", "--read-model", "nope"), "--read-model"),
        (("--at", "5", "--read-model", "agenda", "--dump", "nope"), "--dump"),
        (("--at", "5", "--read-model", "agenda", "--keep", "-1"), "--keep"),
    ]
    for args, named in cases:
        assert await replay.run(pool, parsed(*args)) == 2, args
        assert named in capsys.readouterr().err, args
    # Well-formed, but nothing there then: status 1.
    early = parsed("--at", "1900-01-01T00:00:00Z", "--aggregate", patient)
    assert await replay.run(pool, early) == 1
    assert "no event" in capsys.readouterr().err
    assert await scratch_schemas(pool) == []
    # Through the console script: argparse's refusals and ours, with no traceback.
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    for args in (("--at", "5"), ("--at", "nope\x7f", "--aggregate", patient)):
        done = run_cli("replay", *args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "--" in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
