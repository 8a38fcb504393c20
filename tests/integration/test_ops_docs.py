"""The runbook's commands, run as docs/operations.md writes them, print what it says.

A new operator follows docs/operations.md literally; these check the samples
that go stale when the code moves on (the schema version, the migrate output)
and that no editing note is left in the text.
"""

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from infra.bootstrap import with_database
from infra.schema import LATEST
from tests.integration.test_cli import run_cli

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _runbook() -> str:
    return OPERATIONS.read_text()


@pytest.fixture
async def empty_db_url(servers) -> AsyncIterator[str]:
    """A new, empty database: what `createdb` gives the operator."""
    name = f"carnet_test_opsdocs_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(servers.database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield with_database(servers.database_url, name)
    conn = await asyncpg.connect(servers.database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def test_the_runbook_holds_no_editing_notes() -> None:
    text = _runbook()
    for leftover in ("(unchanged text)", "Also fix the paragraph", "TODO", "FIXME"):
        assert leftover not in text, f"docs/operations.md still says {leftover!r}"


def test_the_runbook_links_to_sections_it_has() -> None:
    text = _runbook()
    anchors = set()
    for title in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^a-z0-9 _-]", "", title.lower().replace("`", "")).replace(" ", "-")
        anchors.add(slug)
    wanted = set(re.findall(r"\]\(#([a-z0-9_-]+)\)", text))
    assert wanted - anchors == set()


async def test_migrate_on_a_new_database_prints_the_runbooks_sample(empty_db_url) -> None:
    env = {"CARNET_DATABASE_URL": empty_db_url}
    done = run_cli("migrate", env=env)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.endswith(f"schema migrated from version 0 to {LATEST}")
    # The Upgrades section quotes the whole output...
    assert f"```\n{printed}\n```" in _runbook()
    # ... and the first production start its last line.
    assert f"# applied 1: initial schema … schema migrated from version 0 to {LATEST}" in _runbook()

    again = run_cli("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema is up to date at version {LATEST}"
    assert f"`schema is up to date at version {LATEST}`" in _runbook()


@pytest.mark.parametrize("offset", [-1, 1])
async def test_the_schema_refusals_the_runbook_quotes_are_printed(db_url, offset) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        if offset < 0:
            await conn.execute("DELETE FROM carnet.schema_migrations WHERE version = $1", LATEST)
        else:
            await conn.execute(
                "INSERT INTO carnet.schema_migrations (version, name) VALUES ($1, 'future')",
                LATEST + 1,
            )
    finally:
        await conn.close()
    done = run_cli("projections", "status", env={"CARNET_DATABASE_URL": db_url})
    assert done.returncode == 1
    refusal = done.stderr.strip()
    assert f"`{refusal}`" in _runbook(), refusal
