"""`carnet tokens`: list, issue, revoke, lift a suspension of, and rotate bearer tokens.

Each command goes through the same use cases as the admin API (every change
is an event in the log) and leaves an access-ledger entry by the admin
"cli". No command prints a secret but `issue` and `rotate`, once; the log
and the ledger never hold one.

  carnet tokens list [--actor KIND] [--actor-id ID] [--state STATE] [--json]
  carnet tokens issue --actor KIND [--actor-id ID] [--establishment-id ID] [--label TEXT]
  carnet tokens revoke TOKEN_ID [--reason TEXT]
  carnet tokens lift TOKEN_ID
  carnet tokens rotate TOKEN_ID [--valid-days N]

`list` prints a table, or with `--json` one object per line in the shape of
`GET /admin/tokens`'s tokens. Its `last used` is the token's last request
recorded in the access ledger (from the access index, a read model).

Exit status: 0 done; 1 refused (no such token, already revoked, not
suspended); 2 a bad flag or value.
"""

import argparse
import dataclasses
from typing import Any

import asyncpg

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
    when,
)
from infra.commands.log import text
from infra.http.admin_routes import ISSUED_FIELDS, TOKEN_FIELDS, token_out
from services.actors import ActorKind
from services.credentials import IssuedToken
from services.ports import TokenQuery, TokenRow

PROG = "carnet tokens"
STATES = ("active", "revoked", "suspended")
PAGE = 500


def add(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "tokens",
        help="list, issue, revoke, lift and rotate bearer tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="tokens_command", required=True)
    kinds = [k.value for k in ActorKind]

    listing = commands.add_parser("list", help="tokens with their actor, state and last use")
    listing.add_argument("--actor", choices=kinds, help="only this kind of actor")
    listing.add_argument("--actor-id", type=an_id, help="only this actor's tokens")
    listing.add_argument("--establishment-id", type=an_id, help="only this establishment's")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--after", type=bounded(0, 2**63 - 1), default=0, help="a cursor")
    listing.add_argument("--limit", type=bounded(1, 2**63 - 1), help="at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    issue = commands.add_parser("issue", help="issue a token bound to an actor")
    issue.add_argument("--actor", required=True, choices=kinds)
    issue.add_argument("--actor-id", type=an_id, help="patient or practitioner id")
    issue.add_argument("--establishment-id", type=an_id, help="staff only")
    issue.add_argument("--label", default="", type=_label)
    issue.add_argument("--valid-days", type=bounded(1, 3650), help="expires after (default never)")
    issue.add_argument("--json", action="store_true", help="one JSON object")

    revoke = commands.add_parser("revoke", help="revoke a token; holds from its next request")
    revoke.add_argument("token_id", type=an_id)
    revoke.add_argument("--reason", default="", type=_label)
    revoke.add_argument("--json", action="store_true", help="one JSON object")

    lift = commands.add_parser("lift", help="lift a token's automatic suspension")
    lift.add_argument("token_id", type=an_id)
    lift.add_argument("--json", action="store_true", help="one JSON object")

    rotate = commands.add_parser(
        "rotate", help="a new secret for the same actor; the old token is revoked (rotated)"
    )
    rotate.add_argument("token_id", type=an_id)
    rotate.add_argument(
        "--valid-days", type=bounded(1, 3650), help="default: the old token's validity period"
    )
    rotate.add_argument("--json", action="store_true", help="one JSON object")


def _label(value: str) -> str:
    return text(value) if value else value


async def run(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    command = AdminCommand(pool, f"{PROG} {args.tokens_command}", args)
    try:
        match args.tokens_command:
            case "list":
                await _list(command, args)
            case "issue":
                _print_issued(await _issue(command, args), args.json)
            case "revoke":
                await _change(command, args, "revoked")
            case "lift":
                await _change(command, args, "active")
            case "rotate":
                _print_issued(await _rotate(command, args), args.json)
    except DomainError as e:
        return refused(PROG, e)
    return 0


async def _list(command: AdminCommand, args: argparse.Namespace) -> None:
    wanted = args.limit
    query = TokenQuery(
        actor_ids=frozenset({args.actor_id} if args.actor_id else ()),
        actor_kinds=frozenset({args.actor} if args.actor else ()),
        states=frozenset({args.state} if args.state else ()),
        establishment_ids=frozenset({args.establishment_id} if args.establishment_id else ()),
        after=args.after,
        limit=PAGE,
    )

    async def work() -> tuple[list[TokenRow], Noted]:
        head = await command.head()
        found = await every_page(
            lambda after: command.credentials.list_tokens(
                command.actor, dataclasses.replace(query, after=after)
            ),
            query.after,
            wanted,
            PAGE,
        )
        return found, Noted([str(t.token_id) for t in found], TOKEN_FIELDS, head)

    rows = await command.audited("token", "search", [], work)
    if args.json:
        for row in rows:
            json_line(token_out(row))
        return
    table(
        [
            [
                str(r.token_id),
                r.actor_kind,
                r.state,
                str(r.actor_id),
                when(r.expires_at),
                when(r.last_used_at),
                r.display_name + (f" ({r.reason})" if r.reason else ""),
            ]
            for r in rows
        ],
        ["token_id", "actor", "state", "actor_id", "expires", "last used", "label"],
    )


async def _issue(command: AdminCommand, args: argparse.Namespace) -> IssuedToken:
    async def work() -> tuple[IssuedToken, Noted]:
        issued = await command.credentials.issue_token(
            command.actor,
            command.meta,
            ActorKind(args.actor),
            args.actor_id,
            args.establishment_id,
            args.label,
            args.valid_days,
        )
        return issued, Noted([str(issued.actor.token_id)], ISSUED_FIELDS, issued.position)

    return await command.audited("token", "create", [], work)


async def _rotate(command: AdminCommand, args: argparse.Namespace) -> IssuedToken:
    async def work() -> tuple[IssuedToken, Noted]:
        issued = await command.credentials.rotate_token(
            command.actor, command.meta, args.token_id, args.valid_days
        )
        touched = [str(args.token_id), str(issued.actor.token_id)]
        return issued, Noted(touched, ("state", *ISSUED_FIELDS), issued.position)

    return await command.audited("token", "change", [args.token_id], work)


async def _change(command: AdminCommand, args: argparse.Namespace, state: str) -> None:
    credentials = command.credentials

    async def work() -> tuple[int, Noted]:
        if state == "revoked":
            position = await credentials.revoke_token(
                command.actor, command.meta, args.token_id, args.reason
            )
        else:
            position = await credentials.lift_suspension(command.actor, command.meta, args.token_id)
        return position, Noted([str(args.token_id)], ("state",), position)

    await command.audited("token", "change", [args.token_id], work)
    if args.json:
        json_line({"token_id": str(args.token_id), "state": state})
    else:
        print(f"token_id: {args.token_id}")
        print(f"state:    {state}")


def _print_issued(issued: IssuedToken, as_json: bool) -> None:
    actor = issued.actor
    if as_json:
        out: dict[str, Any] = {
            "token": issued.secret,
            "token_id": str(actor.token_id),
            "actor_kind": actor.kind.value,
            "actor_id": str(actor.id),
            "establishment_id": str(actor.establishment_id) if actor.establishment_id else None,
            "replaces": str(issued.replaces) if issued.replaces else None,
        }
        json_line(out)
        return
    print(f"token_id: {actor.token_id}")
    if issued.replaces:
        print(f"replaces: {issued.replaces} (revoked)")
    print(f"actor:    {actor.kind.value} {actor.id}")
    print(f"token:    {issued.secret}")
