"""`carnet grants`: list, give and withdraw what integrations may do on agendas.

A grant is what one integration (practice software, known by the actor id
of its tokens) may do on one practitioner's agenda: `agenda:read`,
`appointments:write`, `patients:contact:read`. Each command goes through the
same use cases as the API (every change is an event in the log) and leaves
an access-ledger entry by the admin "cli".

  carnet grants list [--practitioner-id ID] [--integration-id ID] [--json]
  carnet grants give PRACTITIONER_ID INTEGRATION_ID --scope SCOPE [--scope SCOPE …]
  carnet grants withdraw PRACTITIONER_ID INTEGRATION_ID

`give` replaces the scopes the integration held there. `list` shows grants in
force: a table, or with `--json` one object per line in the shape of
`GET /admin/grants`'s grants.

Exit status: 0 done; 1 refused (no such practitioner or grant); 2 a bad flag.
"""

import argparse

import asyncpg

from domain.credentials import SCOPES, Grant
from domain.errors import DomainError
from infra.commands.credential_audit import (
    AdminCommand,
    Noted,
    an_id,
    bounded,
    every_page,
    json_line,
    refused,
    table,
)
from infra.http.admin_routes import GRANT_FIELDS, grant_out
from services.ports import GrantRow

PROG = "carnet grants"
PAGE = 500


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "grants",
        help="list, give and withdraw integrations' grants on agendas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="grants_command", required=True)

    listing = commands.add_parser("list", help="grants in force")
    listing.add_argument("--practitioner-id", type=an_id, help="on this practitioner's agenda")
    listing.add_argument("--integration-id", type=an_id, help="held by this integration")
    listing.add_argument("--limit", type=bounded(1, 2**63 - 1), help="at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    give = commands.add_parser("give", help="grant an integration scopes on an agenda")
    give.add_argument("practitioner_id", type=an_id)
    give.add_argument("integration_id", type=an_id)
    give.add_argument(
        "--scope", dest="scopes", action="append", required=True, choices=sorted(SCOPES)
    )
    give.add_argument("--json", action="store_true", help="one JSON object")

    withdraw = commands.add_parser("withdraw", help="withdraw an integration's grant")
    withdraw.add_argument("practitioner_id", type=an_id)
    withdraw.add_argument("integration_id", type=an_id)
    withdraw.add_argument("--json", action="store_true", help="one JSON object")


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    command = AdminCommand(pool, f"{PROG} {args.grants_command}", args)
    try:
        if args.grants_command == "list":
            await _list(command, args)
        else:
            await _change(command, args)
    except DomainError as e:
        return refused(PROG, e)
    return 0


async def _list(command: AdminCommand, args: argparse.Namespace) -> None:
    wanted = args.limit

    async def work() -> tuple[list[GrantRow], Noted]:
        head = await command.head()
        found = await every_page(
            lambda after: command.credentials.list_grants(
                command.actor, args.practitioner_id, args.integration_id, after, PAGE
            ),
            0,
            wanted,
            PAGE,
        )
        return found, Noted([str(g.grant_id) for g in found], GRANT_FIELDS, head)

    rows = await command.audited("grant", "search", [], work)
    if args.json:
        for row in rows:
            json_line(grant_out(row))
        return
    table(
        [[str(g.practitioner_id), str(g.integration_id), " ".join(g.scopes)] for g in rows],
        ["practitioner_id", "integration_id", "scopes"],
    )


async def _change(command: AdminCommand, args: argparse.Namespace) -> None:
    credentials = command.credentials
    practitioner_id, integration_id = args.practitioner_id, args.integration_id
    grant_id = str(Grant.create_id(practitioner_id, integration_id))
    giving = args.grants_command == "give"

    async def work() -> tuple[Grant, Noted]:
        if giving:
            grant = await credentials.grant(
                command.actor, command.meta, practitioner_id, integration_id, tuple(args.scopes)
            )
        else:
            grant = await credentials.revoke_grant(
                command.actor, command.meta, practitioner_id, integration_id
            )
        return grant, Noted([grant_id], GRANT_FIELDS, await command.head())

    grant = await command.audited(
        "grant", "change" if giving else "delete", [practitioner_id, integration_id], work
    )
    row = GrantRow(grant.id, practitioner_id, integration_id, tuple(grant.scopes), 0)
    if args.json:
        json_line(grant_out(row))
        return
    print(f"practitioner_id: {practitioner_id}")
    print(f"integration_id:  {integration_id}")
    print(f"scopes:          {' '.join(row.scopes) or '(none: withdrawn)'}")
