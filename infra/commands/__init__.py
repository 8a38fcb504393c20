"""The admin's and the analyst's commands of the `carnet` script, one module each.

Each module has `add(sub)`, which adds its subcommand's parser, and
`run(pool, args) -> int`, which does the work against the database and
returns the exit status. `infra.cli` wires every module listed here.
"""

from types import ModuleType

from infra.commands import grants, log, replay, scope, tokens

ANALYST: dict[str, ModuleType] = {"log": log, "replay": replay, "scope": scope}
ADMIN: dict[str, ModuleType] = {"tokens": tokens, "grants": grants}
