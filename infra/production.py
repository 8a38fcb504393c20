"""What `carnet serve` refuses to start with: each check names its problem.

`carnet run` is the demo (embedded servers, a seeded world, tokens printed);
`carnet serve` is a real deployment, so it refuses what only a demo or a
debugging session should have: no configured servers, the embedded demo
servers, a database that holds the seeded demo world, and debug switches.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from infra.migrations import log_ahead_of_server
from infra.schema import SCHEMA
from infra.settings import Settings, variable

# Environment variables that switch on debugging the production path must not run with.
DEBUG_VARIABLES = {
    "PYTHONASYNCIODEBUG": "asyncio debug mode (slow callbacks logged, every coroutine traced)",
    "PYTHONDEVMODE": "Python development mode",
    "PYTHONTRACEMALLOC": "tracemalloc (every allocation traced)",
    "CARNET_METRICS_DISABLED": "every metric a no-op (the benchmarks' baseline)",
}
# The actor the demo seed writes as (infra/seed.py).
SEED_ACTOR = "seed"


def _socket_dirs(url: str) -> list[Path]:
    """The unix-socket directories a libpq URL may connect through."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    hosts = [unquote(h) for h in parts.hostname.split(",")] if parts.hostname else []
    hosts += [h for value in parse_qs(parts.query).get("host", []) for h in value.split(",")]
    return [Path(h) for h in hosts if h.startswith("/")]


def _postmaster(data_dir: Path) -> list[str]:
    """The lines of the embedded PostgreSQL's postmaster.pid: its port is line 4,
    its socket directory line 5, the addresses it listens on line 6."""
    try:
        return [
            line.strip() for line in (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
        ]
    except (OSError, UnicodeDecodeError):
        return []


def _embedded_socket_dir(data_dir: Path) -> Path | None:
    """Where the embedded PostgreSQL of `data_dir` listens."""
    lines = _postmaster(data_dir)
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None


def _embedded_tcp_port(data_dir: Path) -> int | None:
    """The loopback port of the embedded PostgreSQL, if it listens on TCP at all."""
    lines = _postmaster(data_dir)
    if len(lines) > 5 and lines[5] and lines[3].isdigit():
        return int(lines[3])
    return None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _tcp_ports(url: str) -> list[int]:
    """The loopback ports a libpq URL may connect to (5432 when it names none)."""
    try:
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2].split(",")
    except ValueError:
        return []
    ports = []
    for spec in hosts:
        host, _, port = spec.rpartition(":") if not spec.endswith("]") else (spec, "", "")
        host = unquote(host or spec).strip("[]").lower()
        if host in LOOPBACK:
            ports.append(int(port) if port.isdigit() else 5432)
    return ports


def _under(path: Path, parent: Path) -> bool:
    try:
        return path.resolve().is_relative_to(parent.resolve())
    except OSError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def setting_problems(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """The problems found before connecting to anything."""
    problems = []
    for name in ("database_url", "nats_url"):
        if not getattr(settings, name):
            problems.append(
                f"{variable(name)} is not set: a production start uses configured servers "
                "and starts no embedded one (`carnet run` is the demo)"
            )
    data_dir = settings.data_dir
    if settings.database_url:
        embedded = _embedded_socket_dir(data_dir)
        tcp = _embedded_tcp_port(data_dir)
        if tcp is not None and tcp in _tcp_ports(settings.database_url):
            problems.append(
                f"CARNET_DATABASE_URL points at the embedded demo PostgreSQL (port {tcp}, "
                f"of {variable('data_dir')}={data_dir})"
            )
        for socket_dir in _socket_dirs(settings.database_url):
            if _under(socket_dir, data_dir) or (
                embedded is not None and _same(socket_dir, embedded)
            ):
                problems.append(
                    f"CARNET_DATABASE_URL points at the embedded demo PostgreSQL ({socket_dir}, "
                    f"of {variable('data_dir')}={data_dir})"
                )
                break
    if settings.nats_url:
        port_file = data_dir / "nats.port"
        try:
            demo_port = int(port_file.read_text())
        except (OSError, ValueError):
            demo_port = None
        try:
            parts = urlsplit(settings.nats_url)
            port = parts.port
            local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        except ValueError:
            port, local = None, False
        if demo_port is not None and local and port == demo_port:
            problems.append(
                f"CARNET_NATS_URL points at the embedded demo nats-server (port {demo_port}, "
                f"from {port_file})"
            )
    for name, what in DEBUG_VARIABLES.items():
        if environ.get(name):
            problems.append(f"{name} is set ({what}); unset it")
    if sys.flags.dev_mode and not environ.get("PYTHONDEVMODE"):
        problems.append("Python runs in development mode (-X dev)")
    return problems


async def database_problems(pool: asyncpg.Pool) -> list[str]:
    """The problems found in the database (its schema version is checked before)."""
    problems = []
    seeded = await pool.fetchval(
        # A literal, so that the partial index events_by_seed answers (infra/schema.py).
        f"SELECT 1 FROM {SCHEMA}.events WHERE metadata ->> 'actor_id' = '{SEED_ACTOR}' LIMIT 1"
    )
    if seeded:
        problems.append(
            "the database holds the seeded demo world, with its published demo tokens: "
            "give `carnet serve` a database of its own"
        )
    ahead = await log_ahead_of_server(pool)
    if ahead:
        problems.append(ahead)
    return problems


def refusal(problems: list[str]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"carnet serve: refusing to start in production mode:\n{lines}"
