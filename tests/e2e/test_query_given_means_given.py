"""A query parameter that is given is a filter, and a position that is given is checked.

msgspec's lax mode reads `null` as None for optional ids and choices, which
would drop the filter and answer everything; and a read-your-writes position
sent both ways must be well formed both ways.
"""

import pytest

from tests.e2e.support import problem
from tests.world import World


@pytest.mark.parametrize(
    ("path", "params", "field", "actor"),
    [
        ("/ledger", {"outcome": "null"}, "outcome", "analyst"),
        ("/admin/tokens", {"state": "null"}, "state", "admin"),
        ("/admin/grants", {"practitioner_id": "null"}, "practitioner_id", "admin"),
    ],
)
async def test_a_filter_given_as_null_is_refused_naming_it(
    client, world: World, path: str, params: dict[str, str], field: str, actor: str
) -> None:
    answer = await client.get(path, params=params, headers=world.auth(actor))
    await problem(answer, 400, field)


@pytest.mark.parametrize("bad", ["ten", "-1", "\x00", ""])
async def test_a_malformed_min_position_is_refused_even_beside_a_good_header(
    client, world: World, bad: str
) -> None:
    answer = await client.get(
        f"/patients/{world.patient}/appointments",
        params={"min_position": bad},
        headers={**world.auth("patient"), "Carnet-Min-Position": "1"},
    )
    await problem(answer, 400, "min_position")


async def test_a_repeated_min_position_is_refused(client, world: World) -> None:
    answer = await client.get(
        f"/patients/{world.patient}/appointments?min_position=1&min_position=999999",
        headers=world.auth("patient"),
    )
    await problem(answer, 400, "min_position")


async def test_a_malformed_min_position_is_refused_on_the_ledger_too(client, world: World) -> None:
    answer = await client.get(
        "/ledger", params={"min_position": "ten"}, headers=world.auth("analyst")
    )
    await problem(answer, 400, "min_position")
