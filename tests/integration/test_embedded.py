"""The embedded PostgreSQL and NATS servers really start, serve clients, and stop."""

import socket
import time
from pathlib import Path

import asyncpg
import nats
import psutil  # type: ignore[import-untyped]
import pytest

from infra.embedded import EmbeddedNats, start_nats, start_postgres


def _running(pid: int) -> bool:
    # A stopped postmaster may linger as a zombie when PID 1 does not reap orphans.
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _fetch(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_postgres_serves_asyncpg_and_stops_cleanly(tmp_path: Path) -> None:
    with start_postgres(tmp_path / "pg") as pg:
        assert await _fetch(pg.dsn, "select 1") == 1
        assert int(str(await _fetch(pg.dsn, "select pg_current_xact_id()"))) > 0
        pid = pg.pid
        assert _running(pid)
    assert not _running(pid)
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


async def test_postgres_data_survives_a_stop_and_start(tmp_path: Path) -> None:
    with start_postgres(tmp_path / "pg") as pg:
        await _fetch(pg.dsn, "create table kept as select 42 as answer")
    with start_postgres(tmp_path / "pg") as pg:
        assert await _fetch(pg.dsn, "select answer from kept") == 42


async def test_postgres_start_reuses_a_server_left_running_by_a_crashed_run(
    tmp_path: Path,
) -> None:
    abandoned = start_postgres(tmp_path / "pg")
    with start_postgres(tmp_path / "pg") as pg:
        assert pg.pid == abandoned.pid
        assert await _fetch(pg.dsn, "select 1") == 1
    assert not _running(abandoned.pid)
    abandoned.stop()


async def test_postgres_start_recovers_after_the_postmaster_was_killed(tmp_path: Path) -> None:
    crashed = start_postgres(tmp_path / "pg")
    await _fetch(crashed.dsn, "create table kept as select 7 as answer")
    psutil.Process(crashed.pid).kill()
    _wait_until_dead(crashed.pid)
    with start_postgres(tmp_path / "pg") as pg:
        assert pg.pid != crashed.pid
        assert await _fetch(pg.dsn, "select answer from kept") == 7
        crashed.stop()
        assert _running(pg.pid)


async def test_postgres_with_a_long_data_dir_uses_a_shorter_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with start_postgres(deep) as pg:
        assert pg.socket_dir != deep
        assert await _fetch(pg.dsn, "select 1") == 1


async def test_nats_serves_jetstream_and_stops_cleanly(tmp_path: Path) -> None:
    with start_nats(tmp_path / "nats") as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            ack = await js.publish("events.booked", b"hello")
            assert (ack.stream, ack.seq) == ("EVENTS", 1)
        finally:
            await nc.close()
    assert not _accepts(server.port)
    assert server.pid is None


async def test_nats_keeps_jetstream_messages_across_a_crash_and_restart(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            await js.publish("events.booked", b"hello")
        finally:
            await nc.close()
        server.kill()
        assert not _accepts(server.port)
        server.restart()
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info("EVENTS")
            assert info.state.messages == 1
        finally:
            await nc.close()
    finally:
        server.stop()
    assert not _accepts(server.port)


def test_nats_start_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match="already in use"):
            start_nats(tmp_path / "nats", port=port)


def test_nats_start_stops_an_orphaned_server_on_the_same_data_dir(tmp_path: Path) -> None:
    orphan = start_nats(tmp_path / "nats")
    try:
        with EmbeddedNats(tmp_path / "nats", orphan.port) as server:
            server.start()
            assert _accepts(server.port)
            assert server.pid != orphan.pid
    finally:
        orphan.stop()


def test_nats_clean_stop_leaves_no_pid_file(tmp_path: Path) -> None:
    with start_nats(tmp_path / "nats") as server:
        assert (tmp_path / "nats" / "nats-server.pid").exists()
    assert not _accepts(server.port)
    assert not (tmp_path / "nats" / "nats-server.pid").exists()


async def test_postgres_restarted_behind_our_back_is_still_stopped(tmp_path: Path) -> None:
    from infra.embedded import _pg_lib

    pg = start_postgres(tmp_path / "pg")
    first = pg.pid
    try:
        # An operator restarts the server by hand: a new postmaster, a new pid.
        _pg_lib().pg_ctl(
            ["-w", "-t", "60", "-m", "fast", "restart"],
            pgdata=pg.data_dir,
            user=pg._server.system_user,
        )
        _wait_until_dead(first)
        restarted = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
        assert restarted != first and _running(restarted)
    finally:
        pg.stop()
    _wait_until_dead(restarted)
    assert not _running(restarted)
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
