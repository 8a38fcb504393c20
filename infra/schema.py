"""The write-side schema. Idempotent: applying it twice changes nothing."""

import asyncpg

SCHEMA = "carnet"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};

-- The log. `tx` is the writing transaction's id: readers take only rows
-- whose tx is below the oldest transaction still running, and order by
-- (tx, position), so a late commit can never be skipped (DESIGN decision 2).
CREATE TABLE IF NOT EXISTS {SCHEMA}.events (
    position bigserial PRIMARY KEY,
    originator_id uuid NOT NULL,
    originator_version integer NOT NULL,
    topic text NOT NULL,
    state bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
    metadata jsonb NOT NULL DEFAULT '{{}}',
    UNIQUE (originator_id, originator_version)
);
CREATE INDEX IF NOT EXISTS events_tx_position ON {SCHEMA}.events (tx, position);

CREATE TABLE IF NOT EXISTS {SCHEMA}.idempotency_keys (
    scope text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    result text NOT NULL,
    position bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- One-off data migrations already run on this database (infra/backfill.py).
CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations (
    name text PRIMARY KEY,
    done_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {SCHEMA}.relay_checkpoints (
    stream text PRIMARY KEY,
    tx xid8 NOT NULL,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- No NOTIFY trigger: NOTIFY inside a transaction takes a cluster-wide lock
-- at commit, serialising every append. Writers notify after commit instead
-- (infra/eventstore.py, Notifier).

-- The token index: tokens are aggregates in the log; this table is kept in the
-- same transaction as their events, so a revocation holds from the next request.
CREATE TABLE IF NOT EXISTS {SCHEMA}.tokens (
    token_hash bytea PRIMARY KEY,
    token_id uuid NOT NULL UNIQUE,
    actor_kind text NOT NULL,
    actor_id uuid NOT NULL,
    establishment_id uuid,
    display_name text NOT NULL DEFAULT '',
    state text NOT NULL DEFAULT 'active',
    expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


async def apply_schema(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    # Several processes may start at once; one applies, the others wait.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(72810001)")
        await conn.execute(DDL)
