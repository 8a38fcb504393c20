"""`carnet serve` is the production start, `carnet admin bootstrap` its first admin,
`carnet config` its settings; `carnet run` stays the demo."""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from infra.bootstrap import build_services, open_pool
from infra.cli import _banner, _usable
from infra.commands.admin import AlreadyBootstrapped, bootstrap
from infra.seed import seed
from infra.settings import FIELDS, Settings
from services.actors import ActorKind
from tests.integration.db_support import empty_database, free_port
from tests.integration.test_cli import REPO, run_cli
from tests.world import META

URLS = ("CARNET_DATABASE_URL", "CARNET_NATS_URL")


def _env(url: str, servers) -> dict[str, str]:
    return {"CARNET_DATABASE_URL": url, "CARNET_NATS_URL": servers.nats_url}


def test_serve_refuses_to_start_without_configured_servers(tmp_path):
    done = run_cli("serve", env={}, cwd=tmp_path, unset=(*URLS, "CARNET_DATA_DIR"))
    assert done.returncode == 1
    assert "CARNET_DATABASE_URL is not set" in done.stderr
    assert "CARNET_NATS_URL is not set" in done.stderr
    assert not (tmp_path / ".carnet").exists()  # it started no embedded server


def test_serve_refuses_the_embedded_demo_servers_and_debug_switches(tmp_path):
    data_dir = tmp_path / "demo"
    data_dir.mkdir()
    (data_dir / "nats.port").write_text("4333")
    env = {
        "CARNET_DATA_DIR": str(data_dir),
        "CARNET_DATABASE_URL": f"postgresql://postgres@/carnet?host={data_dir}/pg&port=5432",
        "CARNET_NATS_URL": "nats://127.0.0.1:4333",
        "PYTHONASYNCIODEBUG": "1",
        "CARNET_METRICS_DISABLED": "1",
    }
    done = run_cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 4, done.stderr
    assert "CARNET_DATABASE_URL points at the embedded demo PostgreSQL" in problems[0]
    assert "CARNET_NATS_URL points at the embedded demo nats-server" in problems[1]
    assert "PYTHONASYNCIODEBUG is set" in problems[2]
    assert "CARNET_METRICS_DISABLED is set" in problems[3]


async def test_serve_refuses_a_database_holding_the_demo_world(db_url, servers, services, tmp_path):
    await seed(services, tmp_path / "demo.json")
    done = run_cli("serve", env=_env(db_url, servers), cwd=tmp_path)
    assert done.returncode == 1
    assert "the database holds the seeded demo world" in done.stderr
    assert "Traceback" not in done.stderr


async def _wait_healthy(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.returncode is None, log.read_bytes().decode()  # noqa: ASYNC240
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "carnet serve did not start"
            await asyncio.sleep(0.2)


async def test_serve_on_a_migrated_database_seeds_nothing_and_needs_a_bootstrap(
    servers, tmp_path, stream_name
):
    async with empty_database(servers.database_url, "prod") as url:
        env = {k: v for k, v in os.environ.items() if k != "CARNET_DATA_DIR"}
        env.update(_env(url, servers))
        env["PYTHONPATH"] = str(REPO)
        assert run_cli("migrate", env=_env(url, servers), cwd=tmp_path).returncode == 0
        # serve does not migrate by itself, so it needed that step; now it starts.
        port = free_port()
        env["CARNET_HTTP_PORT"] = str(port)
        env["CARNET_STREAM"] = stream_name
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "infra.cli",
                "serve",
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await _wait_healthy(port, proc, log)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/admin/tokens") as answer,
            ):
                assert answer.status == 401  # no token at all, demo or other
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()
        output = log.read_text()
        assert "Production mode" in output
        assert "run `carnet admin bootstrap` once" in output
        assert "carnet_" not in output.replace("carnet_read", "")  # no token printed
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM carnet.events") == 0
        finally:
            await conn.close()
        assert not (tmp_path / ".carnet").exists()
        # Bootstrapped, it no longer asks for one.
        assert run_cli("admin", "bootstrap", env=_env(url, servers), cwd=tmp_path).returncode == 0


async def test_admin_bootstrap_prints_a_working_admin_token_once_then_refuses(
    db_url, servers, services, tmp_path
):
    done = run_cli("admin", "bootstrap", env=_env(db_url, servers), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = dict(
        line.split(":", 1) for line in done.stdout.splitlines() if line.startswith("token")
    )
    actor = await services.credentials.authenticate(lines["token"].strip())
    assert actor is not None and actor.kind is ActorKind.ADMIN
    assert str(actor.token_id) == lines["token_id"].strip()
    again = run_cli("admin", "bootstrap", env=_env(db_url, servers), cwd=tmp_path)
    assert again.returncode == 1
    assert "already bootstrapped" in again.stderr and str(actor.token_id) in again.stderr
    assert "carnet_" not in again.stdout + again.stderr.replace("carnet_read", "")
    assert not (tmp_path / ".carnet").exists()


async def test_a_bootstrap_that_died_before_its_record_still_counts(pool, services):
    issued = await bootstrap(pool, services)
    await pool.execute("DELETE FROM carnet.admin_bootstrap")  # as if it crashed right there
    with pytest.raises(AlreadyBootstrapped) as refused:
        await bootstrap(pool, services)
    assert refused.value.token_id == issued.actor.token_id


async def test_two_bootstraps_at_once_issue_exactly_one_token(db_url):
    pools = [await open_pool(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(bootstrap(p, build_services(p)) for p in pools), return_exceptions=True
        )
        issued = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, AlreadyBootstrapped)]
        assert len(issued) == 1 and len(refused) == 3, results
        admins = await pools[0].fetchval(
            "SELECT count(*) FROM carnet.tokens WHERE actor_kind = 'admin'"
        )
        assert admins == 1
    finally:
        for p in pools:
            await p.close()


def test_config_prints_every_setting_with_its_source_and_hides_secrets(tmp_path):
    config = tmp_path / "carnet.toml"
    config.write_text('stream = "FROMFILE"\nhttp_port = 9000\n')
    env = {
        "CARNET_DATABASE_URL": "postgresql://carnet:hunter2@db.internal:5432/carnet",
        "CARNET_NATS_URL": "nats://ops:natspass@nats.internal:4222",
        "CARNET_HTTP_PORT": "9100",
    }
    done = run_cli(
        "--config", str(config), "config", env=env, cwd=tmp_path, unset=("CARNET_CONFIG",)
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout and "natspass" not in done.stdout
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[3:]}
    assert rows["CARNET_DATABASE_URL"] == [
        "postgresql://carnet:***@db.internal:5432/carnet",
        "env",
        "CARNET_DATABASE_URL",
    ]
    assert rows["CARNET_NATS_URL"][0] == "nats://ops:***@nats.internal:4222"
    assert rows["CARNET_HTTP_PORT"] == ["9100", "env", "CARNET_HTTP_PORT"]
    assert rows["CARNET_STREAM"] == ["FROMFILE", "file", str(config)]
    assert rows["CARNET_POOL_MAX"] == ["20", "default"]
    assert len(rows) == len(FIELDS) and "CARNET_METRICS_PORT" in rows
    assert f"config file: {config}" in done.stdout
    assert not (tmp_path / ".carnet").exists()  # config starts nothing


def test_config_names_a_bad_key_of_its_file(tmp_path):
    config = tmp_path / "carnet.toml"
    config.write_text("databse_url = 'postgresql://db/carnet'\n")
    done = run_cli("config", env={"CARNET_CONFIG": str(config)}, cwd=tmp_path)
    assert done.returncode == 1
    assert "unknown key 'databse_url'" in done.stderr


async def test_the_demo_banner_leaves_out_a_suspended_token(services, tmp_path):
    world = await seed(services, tmp_path / "demo.json")
    patient = await services.credentials.holder(world["tokens"]["patient"])
    await services.credentials.suspend_token(META, patient.token_id, "enumeration")
    usable, left_out = await _usable(services, world["tokens"])
    assert left_out == {"patient": "suspended"}
    banner = _banner(Settings(), world, None, usable, left_out)
    assert world["tokens"]["patient"] not in banner
    assert world["tokens"]["admin"] in banner and world["tokens"]["operator"] in banner
    assert "Left out, as they no longer authenticate: patient (suspended)" in banner
    assert "No booking example" in banner
