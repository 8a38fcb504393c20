"""Sample outputs in the runbook are what the commands print today."""

import re
from pathlib import Path

from tests.integration.test_cli import run_cli

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _sample(command: str) -> list[str]:
    text = OPERATIONS.read_text()
    block = re.search(rf"```console\n\$ \.venv/bin/{re.escape(command)}\n(.*?)```", text, re.S)
    assert block, f"no sample of `{command}` in docs/operations.md"
    return block.group(1).splitlines()


async def test_the_projections_status_sample_matches_the_command(db_url, servers) -> None:
    done = run_cli("projections", "status", env={"CARNET_DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    shown = _sample("carnet projections status")
    assert shown[0].split() == printed[0].split()
    assert [line.split()[0] for line in shown[1:]] == [line.split()[0] for line in printed[1:]]
