"""The write-side schema, as numbered steps (infra/migrations.py applies them).

A step is never edited once released: a change to the schema is a new step
at the end of `STEPS`. Each step's SQL is idempotent (IF NOT EXISTS), so a
database created before the schema had versions takes step 1 as a no-op.
"""

SCHEMA = "carnet"
VERSIONS = f"{SCHEMA}.schema_migrations"

# What the steps are recorded in; created before the first step.
BOOKKEEPING = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {VERSIONS} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

INITIAL = f"""
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


# The first admin token (`carnet admin bootstrap`): at most one row, ever.
# The partial indexes find the events of the demo seed and of the bootstrap
# without reading the whole log (`carnet serve` checks both at every start).
ADMIN_BOOTSTRAP = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.admin_bootstrap (
    once boolean PRIMARY KEY DEFAULT true CHECK (once),
    token_id uuid NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_by_seed ON {SCHEMA}.events (position)
    WHERE metadata ->> 'actor_id' = 'seed';
CREATE INDEX IF NOT EXISTS events_by_bootstrap ON {SCHEMA}.events (position)
    WHERE metadata ->> 'actor_id' = 'bootstrap';
"""

# Step 5: what every HTTP worker shares to admit a request (infra/admission.py):
# one rate bucket per token and one window of not-found/denied look-ups per
# token. UNLOGGED: no WAL, so their commits wait for no fsync. PostgreSQL
# empties them after a crash (and a standby has none): buckets are then full
# again and windows start afresh, which grants at most one burst more per token.
ADMISSION = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {SCHEMA}.rate_buckets (
    token_id uuid PRIMARY KEY,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL,
    granted boolean NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS {SCHEMA}.enumeration_windows (
    token_id uuid PRIMARY KEY,
    hits timestamptz[] NOT NULL,
    last_at timestamptz NOT NULL,
    crossed bigint NOT NULL DEFAULT 0
);
"""


# The access ledger's shard leases (infra/ledger.py): which process writes which
# chain until when. Not evidence, only who should write: the chains' own rows
# keep each one linear, and verification does not trust this table.
LEDGER_SHARDS = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.ledger_shards (
    shard integer PRIMARY KEY CHECK (shard >= 0),
    holder text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);
"""

# Crypto-shredding (infra/keyring.py): each data subject's key, wrapped by the
# key-encryption key (NULL once shredded: the row stays, to tell "erased"
# from "never had data"), and a canary per KEK to refuse a wrong one at start.
KEYRING = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.subject_keys (
    subject_id uuid PRIMARY KEY,
    kek_id text NOT NULL,
    wrapped bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.key_encryption (
    kek_id text PRIMARY KEY,
    canary bytea NOT NULL
);
"""

# (version, name, SQL): version n is STEPS[n - 1]. Data steps (no SQL, code
# that writes events) are listed in infra/migrations.py by the same numbers.
STEPS: list[tuple[int, str, str | None]] = [
    (1, "initial schema", INITIAL),
    (2, "care relationships from past bookings", None),
    (3, "admin bootstrap record and indexes for the start checks", ADMIN_BOOTSTRAP),
    (4, "grant index, filled from the grants already given", None),
    (5, "shared rate buckets and enumeration windows (unlogged)", ADMISSION),
    (6, "access ledger shard leases", LEDGER_SHARDS),
    (7, "access index and access log keyed by log position, rebuilt", None),
    (8, "data subjects' keys for crypto-shredding", KEYRING),
    (9, "personal data of earlier events sealed", None),
]
LATEST = STEPS[-1][0]
