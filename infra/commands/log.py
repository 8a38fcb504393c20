"""`carnet log`."""

import argparse

import asyncpg


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sub.add_parser("log", help="(being built)")


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    raise SystemExit("carnet log: not built yet")
