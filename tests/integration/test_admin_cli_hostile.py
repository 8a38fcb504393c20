"""`carnet tokens` and `carnet grants` with hostile input: labels and ids
that are refused with exit 2 and a message, never a traceback; and text held
in the log (a revocation reason sent over HTTP may hold line breaks) that
cannot break or colour the table a terminal shows."""

from typing import Any

import asyncpg
import pytest

from services.actors import ActorKind
from tests.integration.test_admin_cli import carnet, parser
from tests.world import META, ROOT, World

HOSTILE_LABELS = ["a\x00b", "two\nlines", "\x1b[31mred", "x" * 10_000, "\u0085next", "\ud800"]


@pytest.mark.parametrize(
    "label", HOSTILE_LABELS, ids=["nul", "newline", "ansi", "10k", "nel", "surrogate"]
)
def test_hostile_labels_and_reasons_exit_2_with_a_message(label: str, capsys: Any):
    for argv in (
        ["tokens", "issue", "--actor", "integration", "--label", label],
        ["tokens", "revoke", "00000000-0000-4000-8000-000000000001", "--reason", label],
    ):
        with pytest.raises(SystemExit) as exited:
            parser().parse_args(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "control characters" in err or "200 characters" in err
        assert "Traceback" not in err and "\x1b" not in err and "\x00" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["tokens", "revoke", "not-an-id"],
        ["tokens", "rotate", "{00000000-0000-4000-8000-000000000001}"],
        ["tokens", "lift", "00000000000040008000000000000001"],
        ["tokens", "list", "--actor-id", "\x1b[2J"],
        ["tokens", "list", "--limit", "0"],
        ["tokens", "list", "--after", "-1"],
        ["tokens", "list", "--limit", "9" * 40],
        ["tokens", "rotate", "00000000-0000-4000-8000-000000000001", "--valid-days", "1e3"],
        ["grants", "give", "x", "y", "--scope", "agenda:read"],
        ["grants", "give", "00000000-0000-4000-8000-000000000001",
         "00000000-0000-4000-8000-000000000002", "--scope", "agenda:write"],
        ["grants", "withdraw", "00000000-0000-4000-8000-000000000001", "\x00"],
    ],
)  # fmt: skip
def test_bad_ids_and_numbers_exit_2_naming_the_flag(argv: list[str], capsys: Any):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err and "Traceback" not in err
    assert "\x1b" not in err and "\x00" not in err


async def test_the_table_shows_hostile_text_inert_one_row_per_token(
    pool: asyncpg.Pool, capsys: Any, world: World, services: Any
):
    # A reason given over HTTP may hold tabs and line breaks; older events,
    # written before the edge refused control characters, may hold anything.
    staff = world.actors["staff"].token_id
    assert staff is not None
    await services.credentials.revoke_token(
        ROOT, META, staff, "left\nffffffff-0000-0000-0000-000000000000  admin\t\x1b[2J\u202e"
    )
    await services.credentials.issue_token(ROOT, META, ActorKind.INTEGRATION, label="\u202egnp.exe")
    status, out, _ = await carnet(pool, capsys, "tokens", "list")
    assert status == 0
    _, *lines = out.splitlines()
    assert len(lines) == len(world.actors) + 1, out
    assert "\x1b" not in out and "\t" not in out and "\u202e" not in out
    (row,) = [line for line in lines if line.startswith(str(staff))]
    assert "left\\n" in row
    status, out, _ = await carnet(pool, capsys, "grants", "list")
    assert status == 0


def test_the_carnet_script_offers_the_documented_token_and_grant_commands() -> None:
    from infra import cli

    top = cli._parser()
    for argv in (["tokens", "list", "--json"], ["tokens", "rotate", str(ROOT.id)],
                 ["grants", "list"]):  # fmt: skip
        args = top.parse_args(argv)
        assert args.command == argv[0]
