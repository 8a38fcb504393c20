"""Databases with no schema at all, for the tests of migrations and production starts."""

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import asyncpg

from infra.bootstrap import with_database
from tests.conftest import RUN_ID


@contextlib.asynccontextmanager
async def empty_database(server_url: str, label: str = "empty") -> AsyncIterator[str]:
    """A new, empty database (named like conftest's, so a crashed run's is dropped too)."""
    name = f"carnet_test_{RUN_ID}_{label}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(server_url, name)
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
