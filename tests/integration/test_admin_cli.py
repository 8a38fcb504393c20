"""`carnet tokens` and `carnet grants`: token and grant administration without
SQL. Each command goes through the use cases (events in the log) and leaves an
access-ledger entry by the admin "cli"; bad ids are refused naming the flag."""

import argparse
import json
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from domain.credentials import Grant
from infra.commands import grants, tokens
from infra.http.keys import Services
from tests.e2e.ledger_support import LedgerWatch, settled
from tests.world import META, World


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="carnet")
    sub = top.add_subparsers(dest="command", required=True)
    tokens.add(sub)
    grants.add(sub)
    return top


async def carnet(pool: asyncpg.Pool, capsys: Any, *argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(argv)
    module = tokens if args.command == "tokens" else grants
    status = await module.run(pool, args)
    out, err = capsys.readouterr()
    return status, out, err


async def test_issue_prints_the_lines_it_always_printed_and_is_ledgered(
    pool: asyncpg.Pool, capsys: Any, world: World, services: Services
):
    watch = LedgerWatch(pool)
    await watch.mark()
    status, out, _ = await carnet(
        pool, capsys, "tokens", "issue", "--actor", "patient", "--actor-id", str(world.patient),
        "--label", "Alice, tablet",
    )  # fmt: skip
    assert status == 0
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert set(lines) == {"token_id", "actor", "token"}
    assert lines["actor"].split() == ["patient", str(world.patient)]
    secret = lines["token"].strip()
    actor = await services.credentials.authenticate(secret)
    assert actor is not None and str(actor.token_id) == lines["token_id"].strip()
    (entry,) = settled(await watch.new())
    record = entry.record
    assert (record.actor_kind, record.actor_id, record.resource_type, record.action) == (
        "admin",
        "cli",
        "token",
        "create",
    )
    assert record.record_ids == (lines["token_id"].strip(),)
    assert secret not in str(record)


async def test_list_revoke_lift_and_rotate(
    pool: asyncpg.Pool, capsys: Any, world: World, services: Services
):
    status, out, _ = await carnet(pool, capsys, "tokens", "list", "--json")
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["token_id"] for r in rows} == {str(a.token_id) for a in world.actors.values()}
    assert not any(secret in out for secret in world.tokens.values())

    status, out, _ = await carnet(pool, capsys, "tokens", "list", "--actor", "staff")
    assert status == 0
    header, *lines = out.strip().splitlines()
    assert header.split()[:3] == ["token_id", "actor", "state"] and len(lines) == 2

    staff = str(world.actors["staff"].token_id)
    assert (await carnet(pool, capsys, "tokens", "revoke", staff, "--reason", "left"))[0] == 0
    assert await services.credentials.authenticate(world.tokens["staff"]) is None
    status, _, err = await carnet(pool, capsys, "tokens", "revoke", staff)
    assert status == 1 and "already revoked" in err
    status, out, _ = await carnet(pool, capsys, "tokens", "list", "--state", "revoked", "--json")
    assert [(r["token_id"], r["reason"]) for r in map(json.loads, out.splitlines())] == [
        (staff, "left")
    ]

    patient = world.actors["patient"]
    assert patient.token_id is not None
    await services.credentials.suspend_token(META, patient.token_id, "enumeration suspected")
    assert (await carnet(pool, capsys, "tokens", "lift", str(patient.token_id)))[0] == 0
    assert await services.credentials.authenticate(world.tokens["patient"]) is not None
    status, _, err = await carnet(pool, capsys, "tokens", "lift", str(patient.token_id))
    assert status == 1 and "not suspended" in err

    watch = LedgerWatch(pool)
    await watch.mark()
    old = str(world.actors["practitioner"].token_id)
    status, out, _ = await carnet(pool, capsys, "tokens", "rotate", old, "--json")
    assert status == 0
    new = json.loads(out)
    assert new["replaces"] == old and new["actor_id"] == str(world.practitioner)
    assert await services.credentials.authenticate(world.tokens["practitioner"]) is None
    assert await services.credentials.authenticate(new["token"]) is not None
    (entry,) = settled(await watch.new())
    assert set(entry.record.record_ids) == {old, new["token_id"]}
    assert (entry.record.actor_id, entry.record.action, entry.record.outcome) == (
        "cli",
        "change",
        "allowed",
    )

    missing = str(uuid4())
    await watch.mark()
    status, _, err = await carnet(pool, capsys, "tokens", "rotate", missing)
    assert status == 1 and "no such token" in err
    (refusal,) = settled(await watch.new())
    assert (refusal.record.outcome, refusal.record.record_ids) == ("not-found", (missing,))


async def test_grants_give_list_and_withdraw(
    pool: asyncpg.Pool, capsys: Any, world: World, services: Services
):
    software = str(world.actors["integration"].id)
    dr = str(world.practitioner)
    watch = LedgerWatch(pool)
    await watch.mark()
    status, out, _ = await carnet(
        pool, capsys, "grants", "give", dr, software, "--scope", "agenda:read",
        "--scope", "appointments:write",
    )  # fmt: skip
    assert status == 0 and "agenda:read appointments:write" in out
    (entry,) = settled(await watch.new())
    assert (entry.record.resource_type, entry.record.action, entry.record.actor_id) == (
        "grant",
        "change",
        "cli",
    )
    assert entry.record.record_ids == (
        str(Grant.create_id(world.practitioner, world.actors["integration"].id)),
    )

    status, out, _ = await carnet(pool, capsys, "grants", "list", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "practitioner_id": dr,
            "integration_id": software,
            "scopes": ["agenda:read", "appointments:write"],
        }
    ]
    status, out, _ = await carnet(
        pool, capsys, "grants", "list", "--practitioner-id", str(world.other_practitioner)
    )
    assert status == 0 and out.strip().splitlines() == [out.strip().splitlines()[0]]  # header only

    assert (await carnet(pool, capsys, "grants", "withdraw", dr, software))[0] == 0
    status, out, _ = await carnet(pool, capsys, "grants", "list", "--json")
    assert out == ""
    status, _, err = await carnet(pool, capsys, "grants", "withdraw", dr, str(uuid4()))
    assert status == 1 and "no such grant" in err
    status, _, err = await carnet(
        pool, capsys, "grants", "give", str(uuid4()), software, "--scope", "agenda:read"
    )
    assert status == 1 and "no such practitioner" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("tokens", "revoke", "not-an-id"),
        ("tokens", "list", "--actor-id", "{" + str(uuid4()) + "}"),
        ("tokens", "issue", "--actor", "root"),
        ("tokens", "rotate", str(uuid4()), "--valid-days", "0"),
        ("grants", "give", str(uuid4()), str(uuid4()), "--scope", "everything"),
        ("grants", "list", "--integration-id", "x"),
    ],
)
def test_a_bad_flag_is_exit_status_2_naming_it(argv: tuple[str, ...], capsys: Any):
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "invalid" in err or "argument" in err, err


async def test_a_bad_value_the_use_case_refuses_is_exit_status_2(
    pool: asyncpg.Pool, capsys: Any, world: World
):
    status, _, err = await carnet(pool, capsys, "tokens", "issue", "--actor", "patient")
    assert status == 2 and "(actor_id)" in err
