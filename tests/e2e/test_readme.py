"""The README's walk-through, pasted as a new user would, against a live `carnet run`.

Every command of the walk-through's sections runs, in order, in one bash
session, in a directory laid out like a checkout (`.venv`, `.carnet/`). Each
answer must be of the kind the README shows: the same HTTP status, the same
first JSON key, or the same first words. A fixed id, position or date left
in the README would give a 404, an empty answer or a refusal here.
"""

import asyncio
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("A booking, step by step", "Patients' rights", "Tokens")


@dataclass
class Step:
    command: str
    expected: list[str]


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def steps(text: str) -> list[Step]:
    """The commands of the walk-through's code blocks, each with the answer shown."""
    found: list[Step] = []
    for title in SECTIONS:
        for lang, body in re.findall(r"```(sh|console)\n(.*?)```", _section(text, title), re.S):
            lines = body.splitlines()
            i = 0
            while i < len(lines):
                line = lines[i]
                if lang == "console" and not line.startswith("$ "):
                    if found and found[-1].command and line.strip():
                        found[-1].expected.append(line)
                    i += 1
                    continue
                command = [line[2:] if lang == "console" else line]
                while command[-1].endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command.append(lines[i])
                i += 1
                joined = "\n".join(command).strip()
                if joined and not joined.startswith("#"):
                    found.append(Step(joined, []))
    return found


def _required(shown: list[str]) -> list[str]:
    """What a JSON answer must contain to be the one shown: its first key, every
    key, and the literal values (statuses, reasons, names), not ids, dates or
    trimmed ones."""
    text = "\n".join(shown)
    first = re.match(r'\{"([^"]+)"', shown[0])
    keys = [f'"{k}":' for k in re.findall(r'"(\w+)":', text)]
    pairs = re.findall(r'"\w+":"[^"\d…]*"', text)
    return [first.group(0) if first else "{", *keys, *pairs]


def _same_kind(shown: list[str], actual: str) -> bool:
    """Whether an answer is of the kind the README shows (ids, numbers and dates aside)."""
    expected = shown[0]
    if expected.startswith("HTTP/"):
        return actual.split()[:2] == expected.split()[:2]
    if expected.startswith("{"):
        first, *rest = _required(shown)
        return actual.startswith(first) and all(part in actual for part in rest)
    return _shape(actual.split("\n", 1)[0]) == _shape(expected)


def _patiently(step: Step) -> str:
    """A read whose answer comes from a read model, retried until it is the one shown
    (as a reader would run it again), for at most 10 s."""
    checks = " && ".join(
        f'printf %s "$_out" | grep -qF -- {shlex.quote(part)}' for part in _required(step.expected)
    )
    return (
        f"_try=0; while :; do _out=$({step.command} 2>&1) || true; if {checks}; then break; fi; "
        '_try=$((_try+1)); [ "$_try" -ge 20 ] && break; sleep 0.5; done; printf \'%s\\n\' "$_out"'
    )


def _is_a_read(step: Step) -> bool:
    return (
        step.command.startswith("curl -s ")
        and " -X " not in step.command
        and bool(step.expected)
        and step.expected[0].startswith("{")
    )


def _shape(line: str) -> str:
    # Ids and numbers differ from run to run; the words around them do not.
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", line)
    return re.sub(r"\d+", "N", line).strip()


def test_the_walk_through_is_parsed_whole() -> None:
    found = steps(README.read_text())
    commands = "\n".join(s.command for s in found)
    # The walk-through books, reschedules, cancels, attacks and verifies.
    for part in ("/appointments/$A/reschedule", "/appointments/$N/cancel", "carnet verify"):
        assert part in commands
    assert not re.search(r"\b[0-9a-f]{8}-[0-9a-f]{4}-", commands), "a fixed id in a command"
    assert not re.search(r"20\d\d-\d\d-\d\d", commands), "a fixed date in a command"
    assert all(s.expected for s in found if s.command.startswith("curl -si"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README walk-through needs jq")
async def test_the_readme_walk_through_runs_against_a_live_server(
    db_url: str, servers, tmp_path: Path, stream_name: str
) -> None:
    port = _free_port()
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    env = {
        **os.environ,
        "CARNET_DATABASE_URL": db_url,
        "CARNET_NATS_URL": servers.nats_url,
        "CARNET_HTTP_PORT": str(port),
        "CARNET_DATA_DIR": str(tmp_path / ".carnet"),
        "CARNET_STREAM": stream_name,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    log = (tmp_path / "carnet-run.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        "run",
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert server.returncode is None, (tmp_path / "carnet-run.log").read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "carnet run did not start"
                await asyncio.sleep(0.2)
        found = steps(README.read_text())
        script = ["set -euo pipefail"]
        for n, step in enumerate(found):
            command = step.command.replace("B=http://127.0.0.1:8080", f"B=http://127.0.0.1:{port}")
            command = _patiently(step) if _is_a_read(step) else command
            script += [f"echo '@@{n}@@'", command, "echo"]
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # step 6 shows its answer on stderr
            text=True,
            timeout=240,
            check=False,
        )
        output = done.stdout
        parts = re.split(r"^@@(\d+)@@\n", done.stdout, flags=re.M)
        answers = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
        assert done.returncode == 0, f"the walk-through stopped:\n{output[-3000:]}"
        assert len(answers) == len(found)
        for n, step in enumerate(found):
            if not step.expected:
                continue
            actual = answers[n].lstrip("\n")
            assert _same_kind(step.expected, actual), (
                f"{step.command}\n  README shows: {step.expected[0]}\n  got: {actual[:400]}"
            )
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()
            await server.wait()
        log.close()
