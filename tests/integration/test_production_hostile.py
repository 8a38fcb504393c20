"""Hostile starts: the demo database spelled another way, `carnet migrate` and `carnet admin
bootstrap` from several processes at once or killed half-way, a database down or hung."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from infra.migrations import schema_version
from infra.production import setting_problems
from infra.schema import LATEST, STEPS
from infra.settings import Settings
from tests.frozen_proxy import FrozenProxy
from tests.integration.db_support import empty_database
from tests.integration.test_cli import REPO, run_cli


def _env(url: str, servers) -> dict[str, str]:
    return {"CARNET_DATABASE_URL": url, "CARNET_NATS_URL": servers.nats_url}


def _popen(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    merged = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", *args],
        env=merged,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fake_demo(tmp_path: Path, listen: str = "") -> tuple[Path, Path]:
    """A data directory whose embedded PostgreSQL's socket is elsewhere, as a real one's is."""
    data_dir, sockets = tmp_path / "demo", tmp_path / "sockets"
    (data_dir / "pg").mkdir(parents=True)
    sockets.mkdir()
    (data_dir / "pg" / "postmaster.pid").write_text(
        f"4242\n{data_dir / 'pg'}\n1700000000\n54329\n{sockets}\n{listen}\n  1 0\nready\n"
    )
    return data_dir, sockets


@pytest.mark.parametrize(
    "spelling",
    [
        "postgresql://postgres@/carnet?host={sockets}&port=54329",
        "postgresql://postgres@/carnet?host={sockets}/&port=54329",  # a trailing slash
        "postgresql://postgres@/carnet?host={sockets}/../sockets&port=54329",
        "postgresql://postgres@/carnet?host={quoted}&port=54329",  # percent-encoded
        "postgresql://postgres@{quoted}:54329/carnet",
    ],
)
def test_serve_refuses_the_embedded_socket_however_it_is_spelled(tmp_path, spelling):
    data_dir, sockets = _fake_demo(tmp_path)
    url = spelling.format(sockets=sockets, quoted=str(sockets).replace("/", "%2F"))
    settings = Settings(database_url=url, nats_url="nats://nats.internal:4222", data_dir=data_dir)
    problems = setting_problems(settings, {})
    assert any("embedded demo PostgreSQL" in p for p in problems), (url, problems)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_serve_refuses_the_embedded_postgres_on_its_loopback_port(tmp_path, host):
    data_dir, _ = _fake_demo(tmp_path, listen="localhost")
    settings = Settings(
        database_url=f"postgresql://postgres@{host}:54329/carnet",
        nats_url="nats://nats.internal:4222",
        data_dir=data_dir,
    )
    assert any("embedded demo PostgreSQL (port 54329" in p for p in setting_problems(settings, {}))
    other = Settings(
        database_url=f"postgresql://postgres@{host}:5432/carnet",
        nats_url="nats://nats.internal:4222",
        data_dir=data_dir,
    )
    assert setting_problems(other, {}) == []


def test_serve_refuses_a_bad_url_in_one_line_without_echoing_it(tmp_path, servers):
    done = run_cli(
        "serve",
        env={
            "CARNET_DATABASE_URL": "postgresql://carnet:x/S3kr1t@db:5432/carnet",
            "CARNET_NATS_URL": servers.nats_url,
        },
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "CARNET_DATABASE_URL" in done.stderr
    assert "S3kr1t" not in done.stdout + done.stderr and "Traceback" not in done.stderr


async def test_migrate_from_three_processes_at_once_applies_each_step_once(servers, tmp_path):
    async with empty_database(servers.database_url, "mig3") as url:
        procs = [_popen("migrate", env=_env(url, servers), cwd=tmp_path) for _ in range(3)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        applied = [
            line for out, _ in outputs for line in out.splitlines() if line.startswith("applied ")
        ]
        assert sorted(applied) == sorted(f"applied {v}: {n}" for v, n, _ in STEPS), outputs
        conn = await asyncpg.connect(url)
        try:
            assert await schema_version(conn) == LATEST
            names = {r[0] for r in await conn.fetch("SELECT name FROM carnet_read.projections")}
            assert "agenda" in names
        finally:
            await conn.close()


async def test_migrate_killed_half_way_then_run_again_finishes(servers, tmp_path):
    for delay in (0.4, 0.8, 1.2):
        async with empty_database(servers.database_url, "mig9") as url:
            proc = _popen("migrate", env=_env(url, servers), cwd=tmp_path)
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            again = run_cli("migrate", env=_env(url, servers), cwd=tmp_path)
            assert again.returncode == 0, again.stderr
            conn = await asyncpg.connect(url)
            try:
                assert await schema_version(conn) == LATEST
                rows = await conn.fetch("SELECT version FROM carnet.schema_migrations")
                assert sorted(r[0] for r in rows) == [v for v, _, _ in STEPS]
            finally:
                await conn.close()


async def test_two_bootstrap_processes_at_once_print_one_secret_once(db_url, servers, tmp_path):
    procs = [
        _popen("admin", "bootstrap", env=_env(db_url, servers), cwd=tmp_path) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    everything = "".join(out + err for out, err in outputs)
    secrets = re.findall(r"carnet_(?!read)[A-Za-z0-9_-]{20,}", everything)
    assert len(secrets) == 1, everything
    assert "already bootstrapped" in everything and "Traceback" not in everything


async def test_bootstrap_on_an_unmigrated_database_names_the_fix_and_writes_nothing(
    servers, tmp_path
):
    async with empty_database(servers.database_url, "boot0") as url:
        done = run_cli("admin", "bootstrap", env=_env(url, servers), cwd=tmp_path)
        assert done.returncode == 1
        assert "run `carnet migrate`" in done.stderr and "Traceback" not in done.stderr
        assert "carnet_" not in done.stdout
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('carnet.events')") is None
        finally:
            await conn.close()


@pytest.mark.parametrize("command", [("serve",), ("admin", "bootstrap"), ("migrate",)])
def test_a_database_that_is_down_is_named_in_one_line(servers, tmp_path, command):
    url = "postgresql://carnet:S3kr1t@127.0.0.1:1/carnet"  # nothing listens on port 1
    started = time.monotonic()
    done = run_cli(*command, env=_env(url, servers), cwd=tmp_path, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "S3kr1t" not in done.stdout + done.stderr
    assert "database" in done.stderr
    assert time.monotonic() - started < 15


async def test_serve_on_a_hung_database_gives_up_within_the_database_timeout(
    db_url, servers, tmp_path
):
    proxy = await FrozenProxy.in_front_of(db_url)
    proxy.freeze()
    try:
        env = {**_env(proxy.url(db_url), servers), "CARNET_DATABASE_TIMEOUT": "1"}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.cli",
            "serve",
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail("carnet serve hangs on a database that does not answer")
        assert proc.returncode != 0
        assert time.monotonic() - started < 10
        assert b"Traceback" not in err and b"database" in err, err
    finally:
        await proxy.close()
