import os
import subprocess
import sys
from pathlib import Path

from services.actors import ActorKind

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    unset: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`carnet ARGS` in a subprocess; `unset` removes variables of the test's environment."""
    merged = {k: v for k, v in {**os.environ, **env}.items() if k not in unset}
    if cwd is not None:  # `python -m infra.cli` from elsewhere still finds the code
        merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), merged.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=merged,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_carnet_tokens_issue_prints_a_token_that_authenticates(db_url, servers, services):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    done = run_cli("tokens", "issue", "--actor", "operator", "--label", "grafana", env=env)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.strip().splitlines())
    secret = lines["token"].strip()
    actor = await services.credentials.authenticate(secret)
    assert actor is not None and actor.kind is ActorKind.OPERATOR
    assert str(actor.token_id) == lines["token_id"].strip()


async def test_carnet_tokens_issue_refuses_an_unknown_patient(db_url, servers):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    done = run_cli(
        "tokens",
        "issue",
        "--actor",
        "patient",
        "--actor-id",
        "00000000-0000-0000-0000-000000000001",
        env=env,
    )
    assert done.returncode == 1  # refused (2 is a malformed flag)
    assert "no such patient" in done.stderr and "Traceback" not in done.stderr


async def test_a_command_given_both_urls_creates_no_data_directory(db_url, servers, tmp_path):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    for args in (("verify",), ("projections", "status"), ("migrate",)):
        done = run_cli(*args, env=env, cwd=tmp_path, unset=("CARNET_DATA_DIR",))
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".carnet").exists()
    assert list(tmp_path.iterdir()) == []


async def test_resume_of_a_running_projection_says_so_and_changes_nothing(db_url, servers, pool):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    before = await pool.fetchrow("SELECT * FROM carnet_read.projections WHERE name = 'agenda'")
    done = run_cli("projections", "resume", "agenda", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "agenda: already running, nothing to resume"
    after = await pool.fetchrow("SELECT * FROM carnet_read.projections WHERE name = 'agenda'")
    assert after == before


async def test_resume_of_a_stopped_projection_restarts_it(db_url, servers, pool):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    await pool.execute(
        "UPDATE carnet_read.projections SET state = 'stopped', error = 'boom' WHERE name = 'agenda'"
    )
    done = run_cli("projections", "resume", "agenda", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "agenda: resumed"
    row = await pool.fetchrow(
        "SELECT state, error FROM carnet_read.projections WHERE name = 'agenda'"
    )
    assert (row["state"], row["error"]) == ("running", None)
