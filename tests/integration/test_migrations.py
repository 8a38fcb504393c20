"""The schema is versioned: `carnet migrate` applies the pending steps and says so;
anything else given a database URL refuses a schema of another version."""

import asyncio

import asyncpg
import pytest

from infra.bootstrap import open_pool
from infra.migrations import SchemaMismatch, migrate, schema_version
from infra.schema import LATEST, STEPS
from tests.integration.db_support import empty_database
from tests.integration.test_cli import run_cli


def _env(url: str, servers) -> dict[str, str]:
    return {"CARNET_DATABASE_URL": url, "CARNET_NATS_URL": servers.nats_url}


async def test_migrate_applies_every_step_once_and_then_says_it_is_up_to_date(servers, tmp_path):
    async with empty_database(servers.database_url) as url:
        done = run_cli("migrate", env=_env(url, servers), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        expected = [f"applied {version}: {name}" for version, name, _ in STEPS]
        expected.append(f"schema migrated from version 0 to {LATEST}")
        assert done.stdout.splitlines() == expected
        again = run_cli("migrate", env=_env(url, servers), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"schema is up to date at version {LATEST}"
        conn = await asyncpg.connect(url)
        try:
            assert await schema_version(conn) == LATEST
            rows = await conn.fetch("SELECT version, name FROM carnet.schema_migrations")
            assert sorted(tuple(r) for r in rows) == [(v, n) for v, n, _ in STEPS]
            # ...and the read models exist, so a production start can serve reads.
            names = {r[0] for r in await conn.fetch("SELECT name FROM carnet_read.projections")}
            assert "agenda" in names and "availability" in names
        finally:
            await conn.close()


async def test_a_command_on_an_unmigrated_database_names_the_fix(servers, tmp_path):
    async with empty_database(servers.database_url) as url:
        done = run_cli("verify", env=_env(url, servers), cwd=tmp_path)
        assert done.returncode == 1
        assert f"schema at version 0, this Carnet needs {LATEST}: run `carnet migrate`" in (
            done.stderr
        )
        assert "Traceback" not in done.stderr
        conn = await asyncpg.connect(url)
        try:  # and it changed nothing
            assert await conn.fetchval("SELECT to_regclass('carnet.events')") is None
        finally:
            await conn.close()


async def test_serve_refuses_an_older_schema_and_migrate_brings_it_up(db_url, servers, tmp_path):
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM carnet.schema_migrations WHERE version = $1", LATEST)
    finally:
        await conn.close()
    done = run_cli("serve", env=_env(db_url, servers), cwd=tmp_path)
    assert done.returncode == 1
    assert (
        f"schema at version {LATEST - 1}, this Carnet needs {LATEST}: run `carnet migrate`"
        in done.stderr
    )
    migrated = run_cli("migrate", env=_env(db_url, servers), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[0] == f"applied {LATEST}: {STEPS[-1][1]}"


async def test_serve_and_migrate_refuse_a_newer_schema(db_url, servers, tmp_path):
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO carnet.schema_migrations (version, name) VALUES ($1, 'from the future')",
            LATEST + 1,
        )
    finally:
        await conn.close()
    message = f"schema version {LATEST + 1} is newer than this Carnet ({LATEST}): upgrade Carnet"
    for command in ("serve", "migrate", "verify"):
        done = run_cli(command, env=_env(db_url, servers), cwd=tmp_path)
        assert done.returncode == 1, command
        assert message in done.stderr, (command, done.stderr)
    with pytest.raises(SchemaMismatch):
        await open_pool(db_url)  # the demo's auto-migration refuses it too


async def test_a_database_from_before_versions_keeps_its_log(db_url, servers, services, world):
    # What a database written before the schema had versions looks like.
    conn = await asyncpg.connect(db_url)
    try:
        events = await conn.fetchval("SELECT count(*) FROM carnet.events")
        await conn.execute("DROP TABLE carnet.schema_migrations")
        await conn.execute("DROP TABLE carnet.admin_bootstrap")
        assert await schema_version(conn) == 0
    finally:
        await conn.close()
    done = run_cli("migrate", env=_env(db_url, servers))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "applied 1: initial schema"
    conn = await asyncpg.connect(db_url)
    try:
        assert await schema_version(conn) == LATEST
        assert await conn.fetchval("SELECT count(*) FROM carnet.events") == events
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_step_once(servers):
    async with empty_database(servers.database_url) as url:
        pools = [await open_pool(url, schema="none") for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(p) for p in pools))
            applied = sorted(step.version for steps in results for step in steps)
            assert applied == [v for v, _, _ in STEPS]
            assert await schema_version(pools[0]) == LATEST
        finally:
            for p in pools:
                await p.close()
