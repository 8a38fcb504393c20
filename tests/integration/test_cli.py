import os
import subprocess
import sys

from services.actors import ActorKind


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
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
    assert done.returncode == 2
    assert "no such patient" in done.stderr and "Traceback" not in done.stderr
