"""`carnet project` and `carnet relay`, run as processes of their own, serve metrics."""

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _scrape_until(url: str, wanted: list[str], proc: asyncio.subprocess.Process) -> str:
    """The metrics once they show every one of `wanted` (the sampler's gauges come
    with its first tick, which on a busy machine follows the first applied events)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(150):
            assert proc.returncode is None, "the worker exited"
            try:
                async with http.get(url) as answer:
                    text = await answer.text()
                    if all(w in text for w in wanted):
                        return text
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{wanted} never all appeared at {url}")


@pytest.mark.parametrize(
    ("command", "wanted"),
    [
        (
            ["project", "directory"],
            'carnet_projection_events_applied_total{projection="directory"}',
        ),
        (["relay"], "carnet_relay_lag_events{stream="),
    ],
)
async def test_a_separate_worker_serves_its_metrics(
    db_url: str, servers, tmp_path: Path, world, command: list[str], wanted: str, stream_name: str
) -> None:
    port = _free_port()
    stream = stream_name
    env = {
        **os.environ,
        "CARNET_DATABASE_URL": db_url,
        "CARNET_NATS_URL": servers.nats_url,
        "CARNET_STREAM": stream,
        "CARNET_METRICS_PORT": str(port),
        "CARNET_DATA_DIR": str(tmp_path / ".carnet"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        needed = [wanted, "carnet_database_up 1.0", "carnet_log_head_position"]
        text = await _scrape_until(f"http://127.0.0.1:{port}/metrics", needed, proc)
        assert all(n in text for n in needed)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert not os.listdir(tmp_path), "the worker wrote into its working directory"
