"""`carnet retention` and `carnet keys rewrap`, and a start without the right key,
run as an operator runs them (subprocesses on the test's database)."""

import base64
import os

from eventsourcing.utils import get_topic

from domain.directory import Patient
from infra.schema import SCHEMA
from tests.integration.test_cli import run_cli

REGISTERED = get_topic(vars(Patient)["Registered"])


async def test_retention_erases_the_patients_with_nothing_in_the_period(
    db_url, servers, pool, world
):
    # Bob registered eleven years ago and has no appointment; Alice is recent.
    await pool.execute(
        f"UPDATE {SCHEMA}.events SET recorded_at = now() - interval '11 years' "
        "WHERE topic = $1 AND originator_id = $2",
        REGISTERED,
        world.other_patient,
    )
    env = {
        "CARNET_DATABASE_URL": db_url,
        "CARNET_NATS_URL": servers.nats_url,
        "CARNET_RETENTION_YEARS": "10",
    }
    dry = run_cli("retention", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would erase 1 patients" in dry.stdout and str(world.other_patient) in dry.stdout
    assert (
        await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.subject_keys WHERE wrapped IS NULL")
        == 0
    )

    done = run_cli("retention", env=env)
    assert done.returncode == 0, done.stderr
    assert "erased 1 patients" in done.stdout
    shredded = await pool.fetch(
        f"SELECT subject_id FROM {SCHEMA}.subject_keys WHERE wrapped IS NULL"
    )
    assert [r[0] for r in shredded] == [world.other_patient]
    actor = await pool.fetchval(
        f"SELECT metadata ->> 'actor_id' FROM {SCHEMA}.events "
        "WHERE originator_id = $1 ORDER BY originator_version DESC LIMIT 1",
        world.other_patient,
    )
    assert actor == "carnet retention"
    again = run_cli("retention", env=env)
    assert "erased 0 patients" in again.stdout

    off = run_cli("retention", env={**env, "CARNET_RETENTION_YEARS": "0"})
    assert off.returncode == 0 and "no retention policy" in off.stdout


async def test_a_rotation_rewraps_every_key_and_the_old_key_is_then_not_needed(
    db_url, servers, pool, world
):
    old = os.environ["CARNET_KEK"]
    new = base64.b64encode(os.urandom(32)).decode()
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    keys = await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.subject_keys")
    assert keys > 0

    without_old = run_cli("keys", "rewrap", env={**env, "CARNET_KEK": new})
    assert without_old.returncode == 1
    assert "is not the one this database's personal data is encrypted with" in without_old.stderr
    assert "Traceback" not in without_old.stderr

    rotated = run_cli("keys", "rewrap", env={**env, "CARNET_KEK": new, "CARNET_KEK_PREVIOUS": old})
    assert rotated.returncode == 0, rotated.stderr
    assert f"rewrapped {keys} data keys" in rotated.stdout
    after = run_cli(
        "retention", "--dry-run", env={**env, "CARNET_KEK": new, "CARNET_RETENTION_YEARS": "10"}
    )
    assert after.returncode == 0, after.stderr
    assert (
        await pool.fetchval(
            f"SELECT count(DISTINCT kek_id) FROM {SCHEMA}.subject_keys WHERE wrapped IS NOT NULL"
        )
        == 1
    )


async def test_a_command_without_a_key_encryption_key_refuses_in_one_line(db_url, servers):
    env = {"CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": servers.nats_url}
    done = run_cli("verify", env=env, unset=("CARNET_KEK",))
    assert done.returncode == 1
    assert "no key-encryption key: set CARNET_KEK" in done.stderr
    assert "Traceback" not in done.stderr
