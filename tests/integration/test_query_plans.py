"""A statement prepared while the log is small keeps working as the log grows.

asyncpg prepares every statement, and PostgreSQL switches a prepared
statement to a generic plan after five runs, planned with the statistics of
that moment. Planned on a table of a few hundred events, the catch-up of the
aggregate cache became a hash join over a sequential scan of the whole log,
and stayed one: every booking then read every event ever written, and the
booking rate fell round by round in benchmark 3. The pool's connections plan
each run for the table as it is (`plan_cache_mode`).
"""

import json
import uuid

import asyncpg

from infra.aggregate_cache import _CATCH_UP

SMALL, GROWN = 200, 60_000


def _scans(plan: object) -> set[str]:
    """Every (node type, relation) the plan reads."""
    found: set[str] = set()

    def walk(node: dict) -> None:
        if "Relation Name" in node:
            found.add(f"{node['Node Type']} on {node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])  # type: ignore[index]
    return found


async def test_the_catch_up_reads_by_index_after_the_log_grows_under_it(pool: asyncpg.Pool):
    # As in the log: many aggregates of a few events each.
    ids = [uuid.uuid4() for _ in range(SMALL // 2)]
    fill = """INSERT INTO carnet.events (originator_id, originator_version, topic, state)
        SELECT ($1::uuid[])[1 + g % array_length($1::uuid[], 1)], $2 + g, 'test:Thing', '{}'
        FROM generate_series(0, $3 - 1) g"""
    async with pool.acquire() as conn:
        await conn.execute(fill, ids, 1, SMALL)
        await conn.execute("ANALYZE carnet.events")
        await conn.execute(f"PREPARE catch_up(uuid[], int[]) AS {_CATCH_UP}")
        wanted = "'{" + ",".join(str(i) for i in ids[:2]) + "}'::uuid[]"
        for _ in range(8):  # past the five custom plans: a generic one is chosen now
            await conn.execute(f"EXECUTE catch_up({wanted}, '{{0,0}}')")
        await conn.execute(fill, [uuid.uuid4() for _ in range(GROWN // 2)], 1, GROWN)
        plan = json.loads(
            await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE catch_up({wanted}, '{{3,0}}')")
        )
        await conn.execute("DEALLOCATE catch_up")
    assert "Seq Scan on events" not in _scans(plan), plan
