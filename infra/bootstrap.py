"""The composition root: the one place that reads settings and wires adapters."""

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]

from infra.admission import PostgresAdmission
from infra.deadlines import bounded
from infra.eventstore import EventStore
from infra.http.keys import Services
from infra.keyring import (
    Kek,
    KeyError_,
    Keyring,
    PostgresShredder,
    install,
    new_kek_text,
    parse_kek,
    uninstall,
)
from infra.ledger import Ledger
from infra.migrations import check_schema, migrate
from infra.natslink import NatsLink
from infra.projector import Projector
from infra.readmodels import PostgresReadModels
from infra.repository import PostgresRepository
from infra.settings import Settings
from infra.tokens import PostgresTokenStore
from projections import all_projections
from services.booking import BookingService
from services.common import SystemClock
from services.credentials import CredentialService, scopes_of
from services.directory import DirectoryService
from services.ports import Clock
from services.queries import QueryService
from services.rights import RightsService

log = logging.getLogger("carnet")


@dataclass
class Servers:
    """Where the servers are, and the embedded ones to stop on the way out."""

    database_url: str
    nats_url: str
    embedded: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.embedded):
            server.stop()
        self.embedded.clear()


def _alive_owner(owner: Path) -> bool:
    """Whether the process that started the embedded server is still running."""
    try:
        pid = int(owner.read_text())
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and psutil.pid_exists(pid)


def start_servers(settings: Settings, nats_needed: bool = True) -> Servers:
    """Use the servers the environment names; start embedded ones otherwise.

    An embedded server that another Carnet process already runs on the same
    data directory is reused and left running: that process owns it.
    """
    from infra import embedded

    servers = Servers(settings.database_url or "", settings.nats_url or "")
    # Created by the embedded servers as they start, and by nothing else here:
    # a command given both URLs leaves no `.carnet/` behind.
    data_dir = settings.data_dir.resolve()
    try:
        if not settings.database_url:
            pg = embedded.start_postgres(data_dir / "pg")
            owner = data_dir / "pg.owner"
            if pg.reused and _alive_owner(owner):
                pg.detach()  # e.g. `carnet tokens issue` beside a running `carnet run`
            else:
                owner.write_text(str(os.getpid()))  # ours now, crashed owner or none
                servers.embedded.append(pg)
            servers.database_url = pg.dsn
        if not settings.nats_url and nats_needed:
            port_file = data_dir / "nats.port"
            port = int(port_file.read_text()) if port_file.exists() else None
            if port is not None and embedded.accepts(port):
                servers.nats_url = f"nats://127.0.0.1:{port}"
            else:
                server = embedded.start_nats(data_dir / "nats", port)
                port_file.write_text(str(server.port))
                servers.embedded.append(server)
                servers.nats_url = server.url
    except BaseException:
        servers.stop()
        raise
    return servers


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{name}{sep}{query}"


async def ensure_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def release_connection(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool, and no more.

    asyncpg's default reset (UNLISTEN, RESET ALL, unlock advisory locks…) is a
    round trip on every release; Carnet sets no session state, takes only
    transaction-scoped locks and removes its listeners itself, so only an
    abandoned transaction needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# How long one SQL statement may run. It also bounds what asyncpg does after
# a statement is cancelled or times out (the CancelRequest, then the wait for
# the server to confirm it), so on a server that stopped answering a pooled
# connection is closed within about twice this. Requests do not wait for
# that: they are answered at their deadline (infra/http/deadline.py).
STATEMENT_TIMEOUT = 30.0


async def open_pool(
    url: str, settings: Settings | None = None, schema: str = "migrate"
) -> asyncpg.Pool:
    """A pool on `url`, its schema at this Carnet's version and the read models created.

    `schema`: "migrate" applies the pending steps (the demo and the tests);
    "check" raises SchemaMismatch instead (a production start); "none" leaves
    the schema alone and creates no read model (`carnet migrate` does both).
    """
    settings = settings or Settings()
    pool = await asyncpg.create_pool(
        url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        # A new connection to a server that accepts but does not answer would
        # otherwise wait asyncpg's default of 60 s, holding a pool slot.
        timeout=settings.database_timeout,
        command_timeout=STATEMENT_TIMEOUT,
        reset=release_connection,
        # Plan each run for the tables as they are: a generic plan made while
        # the log was small scanned all of it ever after (the aggregate cache's
        # catch-up read every event on every booking; tests/integration/
        # test_query_plans.py). Planning costs less than that risk, measured.
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    try:
        ring = keyring_for(pool, settings, create=False)
        if ring is None and schema == "migrate":
            if not (settings.data_dir / "kek").exists() and await _encrypted_already(pool):
                # A new key would not open it: say so, and make none.
                raise KeyError_(
                    "no key-encryption key, and this database's personal data is already "
                    f"encrypted: set CARNET_KEK (or kek_file), or restore {settings.data_dir}/kek"
                )
            ring = keyring_for(pool, settings, create=True)
        if ring is not None:
            install(ring)
        elif schema != "none":
            raise KeyError_(
                "no key-encryption key: set CARNET_KEK (base64 of 32 bytes, e.g. "
                "`openssl rand -base64 32`) or kek_file; personal data is never "
                "written unencrypted (docs/operations.md, Keys)"
            )
        if schema == "none":
            if ring is not None and await _has_keyring_tables(pool):
                await ring.check()
            return pool
        if schema == "migrate":
            await migrate(pool)
        else:
            await check_schema(pool)
        assert ring is not None
        await ring.check()
        # Read models exist from the start, so reads answer (empty) rather than fail.
        for projection in all_projections():
            await Projector(pool, projection).ensure()
    except BaseException:
        await close_pool(pool)
        raise
    return pool


def keyring_for(pool: asyncpg.Pool, settings: Settings, create: bool) -> Keyring | None:
    """The pool's keyring, from the configured key-encryption key.

    Where it comes from, first found: `kek` (CARNET_KEK), `kek_file`, then
    (for a pool that is not given settings) the environment's CARNET_KEK.
    With none, `create` (the demo and the tests) makes one in data_dir/kek,
    readable by its owner only; otherwise there is no keyring (None)."""
    previous = (
        [parse_kek(settings.kek_previous, "CARNET_KEK_PREVIOUS")] if settings.kek_previous else []
    )
    if settings.kek and settings.kek_file:
        raise KeyError_("CARNET_KEK and kek_file are both set: give the key-encryption key once")
    if settings.kek:
        return Keyring(pool, parse_kek(settings.kek, "CARNET_KEK"), previous)
    if settings.kek_file:
        return Keyring(pool, _kek_from_file(Path(settings.kek_file)), previous)
    if os.environ.get("CARNET_KEK"):
        return Keyring(pool, parse_kek(os.environ["CARNET_KEK"], "CARNET_KEK"), previous)
    if not create:
        return None
    path = settings.data_dir / "kek"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked in: a second process
        # starting at the same moment reads this key, never half of one.
        draft = path.with_name(f"kek.{os.getpid()}.tmp")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_kek_text() + "\n")
        try:
            os.link(draft, path)
            log.warning("made a key-encryption key for this demo in %s: keep it", path)
        except FileExistsError:
            pass  # another process made it first: theirs is the key
        finally:
            os.unlink(draft)
    return Keyring(pool, _kek_from_file(path), previous)


def _kek_from_file(path: Path) -> Kek:
    where = f"kek_file {str(path)!r}"
    try:
        # Non-blocking: a FIFO refuses rather than waits for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KeyError_(f"{where}: not a regular file")
            text = f.read(1000).decode("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyError_(f"{where}: cannot read it ({e.__class__.__name__})") from None
    return parse_kek(text, where)


async def _encrypted_already(pool: asyncpg.Pool) -> bool:
    """Whether a key-encryption key has been recorded for this database."""
    if not await _has_keyring_tables(pool):
        return False
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM carnet.key_encryption)"))


async def _has_keyring_tables(pool: asyncpg.Pool) -> bool:
    found = await pool.fetchval("SELECT to_regclass('carnet.key_encryption') IS NOT NULL")
    return bool(found)


async def close_pool(pool: asyncpg.Pool, within: float = 10.0) -> None:
    """Close gracefully, but never wait for ever: a connection whose cancelled query
    waits on a confirmation that never comes would hold `close()` for good."""
    uninstall(pool)
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.warning("database pool did not close within %g s; terminating it", within)
        pool.terminate()


def build_services(
    pool: asyncpg.Pool,
    clock: Clock | None = None,
    nats: NatsLink | None = None,
    ledger: Ledger | None = None,
    settings: Settings | None = None,
) -> Services:
    settings = settings or Settings()
    clock = clock or SystemClock()
    repo = PostgresRepository(EventStore(pool))
    tokens = PostgresTokenStore(repo.store, repo.mapper)
    # A read-your-writes wait leaves the read itself (and its access entry)
    # one database timeout before the request's deadline.
    read = PostgresReadModels(pool, max_wait=settings.request_timeout - settings.database_timeout)

    async def database() -> str:
        # Not asyncio.wait_for: it waits for the cancelled query's cleanup,
        # which on a frozen server outlasts the timeout by 30 s.
        await bounded(pool.fetchval("SELECT 1"), settings.database_timeout)
        return "ok"

    async def nats_check() -> str:
        return "ok" if nats is not None and nats.is_connected else "down"

    return Services(
        booking=BookingService(repo, clock),
        directory=DirectoryService(repo, clock),
        credentials=CredentialService(repo, clock, tokens, _admission(pool, settings)),
        queries=QueryService(read, clock, lambda actor, pid: scopes_of(repo, actor, pid)),
        read=read,
        ledger=ledger
        or Ledger(
            repo.store,
            mapper=repo.mapper,
            shards=settings.ledger_shards,
            anchor_interval=settings.ledger_anchor_seconds,
            anchor_file=Path(settings.ledger_anchor_file) if settings.ledger_anchor_file else None,
        ),
        clock=clock,
        checks={"database": database, "nats": nats_check},
        rights=RightsService(repo, clock, read, tokens, PostgresShredder(pool), read, read),
    )


def _admission(pool: asyncpg.Pool, settings: Settings) -> PostgresAdmission:
    """The shared budgets; their rows matter for a bucket's refill or a window."""
    keep = max(settings.rate_burst / settings.rate_per_second, settings.enumeration_window)
    return PostgresAdmission(pool, settings.database_timeout, keep_seconds=max(keep, 60.0))


@contextlib.asynccontextmanager
async def connect_nats(url: str, wait: bool = False) -> AsyncIterator[NatsLink]:
    """A NATS link for the process; it keeps trying in the background if NATS is down."""
    link = NatsLink(url)
    connecting = None
    if not await link.connect_once():
        if wait:
            await link.run()
        else:
            connecting = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        if connecting is not None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        await link.close()
