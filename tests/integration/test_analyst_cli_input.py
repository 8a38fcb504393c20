"""The analyst's commands refuse what they cannot do before doing anything:
a message naming the flag and status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from infra.cli import _parser
from infra.commands import log, scope


@pytest.mark.parametrize(
    "flags",
    [
        ["--after", str(2**63)],  # past a bigint: the database would refuse it
        ["--limit", str(2**63)],
        ["--wait", "nan"],
        ["--wait", "-1"],
    ],
)
async def test_carnet_log_refuses_numbers_out_of_range(
    pool: asyncpg.Pool, flags: list[str], capsys: pytest.CaptureFixture[str]
):
    assert await log.run(pool, _parser().parse_args(["log", *flags])) == 2
    err = capsys.readouterr().err
    assert err.startswith("carnet log: --") and "Traceback" not in err


async def test_carnet_scope_refuses_a_folder_it_cannot_make_before_any_work(
    pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out in (a_file, a_file / "below"):
        args = _parser().parse_args(["scope", "--out", str(out), "--token", "t"])
        assert await scope.run(pool, args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"carnet scope: --out {out}") and "Traceback" not in err


# A command whose output never ends, run through `carnet`'s own main().
FLOOD = """
import sys
from infra import cli

async def flood(settings, servers, args):
    while True:
        sys.stdout.write("x" * 65536)
        sys.stdout.flush()

class NoServers:
    def stop(self):
        pass

cli.COMMANDS["verify"] = flood
cli.start_servers = lambda settings, nats_needed: NoServers()
sys.exit(cli.main(["verify"]))
"""


def test_a_reader_that_goes_away_stops_a_command_quietly():
    # `carnet log | head` closes the pipe early: no traceback, status 1.
    with subprocess.Popen(
        [sys.executable, "-c", FLOOD], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as command:
        assert command.stdout is not None and command.stderr is not None
        command.stdout.read(10)
        command.stdout.close()
        err = command.stderr.read().decode()
        assert command.wait(timeout=30) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
