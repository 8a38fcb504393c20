"""A real Prometheus (Debian's package) scrapes a running `carnet run` on loopback,
evaluates ops/prometheus/alerts.yml, and fires CarnetProjectionStopped once an event
that no projection can apply reaches the log, and not before."""

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from infra.eventstore import CHANNEL
from projections import all_projections
from tests.conftest import Servers
from tests.ops.conftest import own_stream
from tests.ops.support import ALERTS, tool

PROJECTIONS = {p.name for p in all_projections()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def until(
    check: Callable[[], Awaitable[Any]],
    within: float,
    what: str,
    alive: dict[str, subprocess.Popen[bytes]],
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        for name, process in alive.items():
            assert process.poll() is None, f"{name} exited with status {process.returncode}"
        with contextlib.suppress(aiohttp.ClientError):
            if found := await check():
                return found
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


@contextlib.contextmanager
def running(args: list[str], log: Path, env: dict[str, str] | None = None):
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def quick_alerts(target: Path) -> None:
    """alerts.yml with every `for:` shortened to 2 s, so that the test takes seconds."""
    text, count = re.subn(r"(?m)^(\s+for:\s*)\d+[smh]\s*$", r"\g<1>2s", ALERTS.read_text())
    assert count == ALERTS.read_text().count("alert:")
    target.write_text(text)


def prometheus_config(directory: Path, carnet_port: int) -> Path:
    """Scrape every second, evaluate every second; the job named as in prometheus.yml."""
    quick_alerts(directory / "alerts.yml")
    config = directory / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: carnet
    static_configs:
      - targets: ["127.0.0.1:{carnet_port}"]
"""
    )
    return config


async def corrupt_event(db_url: str) -> None:
    """Append, as a foreign writer could, an event whose stored state is no JSON: every
    projection reaches it and stops there, naming it (infra/projector.py)."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO carnet.events (originator_id, originator_version, topic, state) "
            "VALUES ($1, 1, 'domain.agenda:Appointment.Cancelled', $2)",
            uuid.uuid4(),
            b"\x00not json",
        )
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    finally:
        await conn.close()


async def test_a_real_prometheus_fires_carnet_projection_stopped_after_a_projection_stops(
    db_url: str, servers: Servers, tmp_path: Path
) -> None:
    prometheus = tool("prometheus")
    carnet_port, prometheus_port = free_port(), free_port()
    carnet_url = f"http://127.0.0.1:{carnet_port}"
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    async with own_stream(servers.nats_url) as names, aiohttp.ClientSession() as http:
        env = {
            **os.environ,
            "CARNET_DATABASE_URL": db_url,
            "CARNET_NATS_URL": servers.nats_url,
            "CARNET_HTTP_PORT": str(carnet_port),
            "CARNET_DATA_DIR": str(tmp_path / "carnet"),
            "CARNET_STREAM": names.stream,
        }
        carnet_cmd = [sys.executable, "-m", "infra.cli", "run"]
        prometheus_cmd = [
            prometheus,
            f"--config.file={prometheus_config(tmp_path, carnet_port)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ]
        with (
            running(carnet_cmd, tmp_path / "carnet.log", env) as carnet,
            running(prometheus_cmd, tmp_path / "prometheus.log") as prom,
        ):
            both = {"carnet run": carnet, "prometheus": prom}

            async def query(expr: str) -> list[Any]:
                async with http.get(f"{api}/query", params={"query": expr}) as response:
                    body = await response.json()
                assert body["status"] == "success", body
                result: list[Any] = body["data"]["result"]
                return result

            async def alerts(name: str) -> list[Any]:
                async with http.get(f"{api}/alerts") as response:
                    body = await response.json()
                return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

            async def carnet_serves_its_projections_running() -> bool:
                async with http.get(f"{carnet_url}/metrics") as response:
                    text = await response.text()
                return all(
                    f'carnet_projection_stopped{{projection="{name}"}} 0.0' in text
                    for name in PROJECTIONS
                )

            try:
                # Carnet is up, its sampler has read the checkpoints, and Prometheus
                # has scraped it and evaluated the rules over those samples.
                await until(carnet_serves_its_projections_running, 120, "carnet run", both)
                await until(lambda: query('up{job="carnet"} == 1'), 60, "the first scrape", both)
                await until(
                    lambda: query(
                        "count(max_over_time(carnet_projection_stopped[1m]) == 0) "
                        f"== {len(PROJECTIONS)} and on () count_over_time(up[1m]) > 5"
                    ),
                    60,
                    "a few seconds of samples of every projection",
                    both,
                )
                assert await alerts("CarnetProjectionStopped") == []
                # Every rule of alerts.yml was loaded and evaluates without an error
                # against what a real Carnet exports.
                async with http.get(f"{api}/rules") as response:
                    (group,) = (await response.json())["data"]["groups"]
                assert len(group["rules"]) == ALERTS.read_text().count("- alert:")
                assert {(r["name"], r["health"]) for r in group["rules"]} == {
                    (r["name"], "ok") for r in group["rules"]
                }

                await corrupt_event(db_url)

                async def stopped_alerts_firing() -> list[Any]:
                    return [
                        a for a in await alerts("CarnetProjectionStopped") if a["state"] == "firing"
                    ]

                firing = await until(stopped_alerts_firing, 60, "CarnetProjectionStopped", both)
            except AssertionError:
                for log in ("carnet.log", "prometheus.log"):
                    print(f"--- {log}\n{(tmp_path / log).read_text(errors='replace')[-4000:]}")
                raise
            stopped = {a["labels"]["projection"] for a in firing}
            assert stopped <= PROJECTIONS and "agenda" in stopped
            (agenda,) = [a for a in firing if a["labels"]["projection"] == "agenda"]
            assert agenda["labels"]["severity"] == "critical"
            assert agenda["annotations"]["runbook_url"].endswith("#alert-carnetprojectionstopped")
            # Carnet's own view agrees: the projection is stopped on the corrupt event.
            status = await query(
                'max by (projection) (carnet_projection_stopped{projection="agenda"})'
            )
            assert status[0]["value"][1] == "1"
