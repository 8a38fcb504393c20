"""Run every benchmark and print one table: `make bench`, or `python -m tests.bench`.

Each benchmark measures ours and its baseline in this same run, on this machine and this
PostgreSQL server, in a database of its own that it drops afterwards. Uses the server named
by CARNET_DATABASE_URL, or starts the embedded one. Goals are reported, never asserted.
"""

import argparse
import dataclasses
import os
import platform
import time
from datetime import UTC, datetime

from infra.loop import run_main
from tests.bench.access_index import bench_access_index
from tests.bench.append import bench_append
from tests.bench.audit import bench_audit, bench_ledger
from tests.bench.common import (
    QUICK,
    Config,
    Result,
    nats_url,
    say,
    server_facts,
    server_url,
    table,
)
from tests.bench.crypto import bench_crypto
from tests.bench.http_bookings import bench_http
from tests.bench.lag import bench_lag
from tests.bench.metrics_overhead import bench_metrics
from tests.bench.peer import bench_peer
from tests.bench.rebuild import bench_rebuild
from tests.bench.relay import bench_relay
from tests.bench.replay import bench_replay, bench_replay_rss
from tests.bench.scope import bench_scope

BENCHMARKS = (
    "append",
    "peer",
    "http",
    "lag",
    "rebuild",
    "relay",
    "audit",
    "ledger",
    "replay",
    "replay-rss",
    "access-index",
    "scope",
    "metrics",
    "crypto",
)


def parse_args(argv: list[str] | None = None) -> tuple[Config, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="always print the breakdowns of [1] (append) and [5] (rebuild); [7]: add a "
        "server whose ledger does all but its INSERT",
    )
    parser.add_argument(
        "--profile-server",
        metavar="FILE",
        help="benchmarks 3 and 7: cProfile the app server(s) into FILE.0 (7: FILE.on.0, "
        "FILE.off.0)",
    )
    parser.add_argument(
        "--http-workers", type=int, help="benchmark 3: server processes on one port (default 1)"
    )
    parser.add_argument("--concurrency", type=int, help="tasks/threads/clients (default 16)")
    parser.add_argument(
        "--audit-clients", type=int, help="benchmark 7: concurrent agenda readers (default 64)"
    )
    parser.add_argument(
        "--lag-rate",
        type=float,
        help="benchmark 4: a fixed steady booking rate (/s) instead of half the measured max",
    )
    parser.add_argument(
        "--ledger-interval",
        type=float,
        metavar="SECONDS",
        help="benchmarks 7 and 8: the ledger's group-commit interval instead of the app's "
        "default (0.002), to compare settings",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.diagnose:
        cfg = dataclasses.replace(cfg, diagnose=True)
    if args.profile_server:
        cfg = dataclasses.replace(cfg, profile_server=os.path.abspath(args.profile_server))
    if args.http_workers:
        cfg = dataclasses.replace(cfg, http_workers=args.http_workers)
    if args.concurrency:
        cfg = dataclasses.replace(cfg, concurrency=args.concurrency)
    if args.ledger_interval is not None:
        cfg = dataclasses.replace(cfg, ledger_interval=args.ledger_interval)
    if args.audit_clients:
        cfg = dataclasses.replace(cfg, audit_clients=args.audit_clients)
    if args.lag_rate:
        cfg = dataclasses.replace(cfg, lag_rate=args.lag_rate)
    return cfg, args.only or list(BENCHMARKS)


async def run(server: str, cfg: Config, which: list[str]) -> list[Result]:
    say(f"server: {await server_facts(server)}")
    results: list[Result] = []
    if "append" in which:
        results.append(await bench_append(server, cfg))
    if "peer" in which:
        results.append(await bench_peer(server, cfg))
    if "http" in which:
        results += await bench_http(server, cfg)
    if "lag" in which:
        results += await bench_lag(server, cfg)
    if "rebuild" in which:
        results += await bench_rebuild(server, cfg)
    if "relay" in which:
        with nats_url() as nats:
            results.append(await bench_relay(server, nats, cfg))
    if "audit" in which:
        results += await bench_audit(server, cfg)
    if "ledger" in which:
        results += await bench_ledger(server, cfg)
    if "replay" in which:
        results += await bench_replay(server, cfg)
    if "replay-rss" in which:
        results += await bench_replay_rss(server, cfg)
    if "access-index" in which:
        results += await bench_access_index(server, cfg)
    if "scope" in which:
        results += await bench_scope(server, cfg)
    if "metrics" in which:
        results += await bench_metrics(server, cfg)
    if "crypto" in which:
        results += await bench_crypto(server, cfg)
    return results


def _load() -> str:
    """Other work on this machine (other test runs, other tenants) skews every figure."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    cfg, which = parse_args(argv)
    began = time.perf_counter()
    where = "CARNET_DATABASE_URL" if os.environ.get("CARNET_DATABASE_URL") else "embedded"
    say(
        f"carnet benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, postgres: {where}, "
        f"load average {_load()}"
    )
    with server_url() as server:
        results = run_main(run(server, cfg, which))
    say(f"\nresults ({time.perf_counter() - began:.0f} s in all, load average now {_load()}):\n")
    say(table(results))


if __name__ == "__main__":
    main()
