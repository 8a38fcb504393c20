"""The admission port in PostgreSQL: one budget per token, whichever worker asks.

Each authenticated request costs ONE statement (`_ADMIT`): it reads the
token's row in `carnet.tokens` by hash (fresh each time: a suspension or a
revocation written by any worker holds from the next request everywhere)
and, if the token exists, takes one unit from its bucket in
`carnet.rate_buckets` with an UPSERT that computes the refill and the take in
SQL. Each not-found/denied look-up costs one statement too (`_MISS`).

Why the sum granted by every worker never exceeds what one process would
grant: both statements change one row per token with INSERT … ON CONFLICT
DO UPDATE, which locks the row and applies the update to its latest
committed version. Concurrent requests for one token are therefore applied
one after the other, each to the state the previous one left: exactly the
sequence of a single process's bucket, with time taken from the database
server's clock and never allowed to run backwards (`greatest(b.at, now)`).
Crossing the enumeration limit is decided by the update that makes the count
reach it (and empties the window in the same write), so it is reported once
per crossing, by one worker, however many cross at the same moment.

Both tables are UNLOGGED (infra/schema.py step 5): after a PostgreSQL crash
they are empty, which only refills buckets and restarts windows. Rows idle
long enough to mean nothing (a bucket full again, a window whose every hit
has expired) are deleted now and then, so the tables hold only the tokens in
use; deleting such a row changes no answer.
"""

import asyncio
import logging
import time
from uuid import UUID

import asyncpg

from infra.deadlines import bounded
from infra.schema import SCHEMA
from services.ports import Admitted, RateLimit, TokenView

log = logging.getLogger("carnet.admission")

BUCKETS = f"{SCHEMA}.rate_buckets"
WINDOWS = f"{SCHEMA}.enumeration_windows"

# $1 token hash, $2 rate per second, $3 burst. A refused take writes the
# refill and leaves the level below one; `granted` says which it was (the new
# level alone cannot: 0.5 left after a take, or 0.5 refused).
_ADMIT = f"""
WITH t AS (
    SELECT token_id, actor_kind, actor_id, establishment_id, display_name, state, expires_at
    FROM {SCHEMA}.tokens WHERE token_hash = $1
), b AS (
    INSERT INTO {BUCKETS} AS b (token_id, tokens, at, granted)
    SELECT t.token_id, $3::float8 - 1, clock_timestamp(), true FROM t
    ON CONFLICT (token_id) DO UPDATE SET (tokens, at, granted) = (
        SELECT CASE WHEN r.level >= 1 THEN r.level - 1 ELSE r.level END, r.at, r.level >= 1
        FROM (
            SELECT least($3::float8, b.tokens + $2::float8 * greatest(0::float8,
                    extract(epoch FROM c.now - b.at)::float8)) AS level,
                greatest(b.at, c.now) AS at
            FROM (SELECT clock_timestamp() AS now) c
        ) r
    )
    RETURNING b.tokens, b.granted
)
SELECT t.token_id, t.actor_kind, t.actor_id, t.establishment_id, t.display_name, t.state,
    t.expires_at, b.tokens, b.granted
FROM t LEFT JOIN b ON true
"""

# $1 token id, $2 the limit, $3 the window in seconds. `crossed` is the count
# when this miss made it reach the limit (the window is emptied with it), else 0.
_MISS = f"""
INSERT INTO {WINDOWS} AS w (token_id, hits, last_at, crossed)
SELECT $1, CASE WHEN $2::bigint <= 1 THEN '{{}}'::timestamptz[] ELSE ARRAY[c.now] END, c.now,
    CASE WHEN $2::bigint <= 1 THEN 1 ELSE 0 END
FROM (SELECT clock_timestamp() AS now) c
ON CONFLICT (token_id) DO UPDATE SET (hits, last_at, crossed) = (
    SELECT CASE WHEN cardinality(k.kept) >= $2::bigint THEN '{{}}'::timestamptz[] ELSE k.kept END,
        c.now,
        CASE WHEN cardinality(k.kept) >= $2::bigint THEN cardinality(k.kept) ELSE 0 END
    FROM (SELECT clock_timestamp() AS now) c,
        LATERAL (SELECT array_append(ARRAY(
            SELECT h FROM unnest(w.hits) h WHERE h >= c.now - $3::float8 * interval '1 second'
        ), c.now) AS kept) k
)
RETURNING crossed
"""

# A bucket untouched for burst/rate seconds is full again: as if it had no row.
# A window whose last hit is older than the window holds no hit that counts.
_IDLE = "clock_timestamp() - $1::float8 * interval '1 second'"
_CLEAN_BUCKETS = f"DELETE FROM {BUCKETS} WHERE at < {_IDLE}"
_CLEAN_WINDOWS = f"DELETE FROM {WINDOWS} WHERE last_at < {_IDLE}"
CLEAN_EVERY = 60.0  # seconds between one process's clean-ups
_MARGIN = 1.0  # seconds beyond the point where a row stops mattering


class PostgresAdmission:
    """`timeout` bounds each statement (Settings.database_timeout): a hung
    database makes the request a 503, never a wait. `keep_seconds`: how long
    an idle row may still matter, at least burst/rate (a bucket's refill) and
    the enumeration window (infra/bootstrap.py derives it from the settings);
    rows idle longer are deleted."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 2.0, keep_seconds: float = 86400.0):
        self.pool = pool
        self.timeout = timeout
        self.keep_seconds = keep_seconds + _MARGIN
        self._cleaned = time.monotonic()
        self._cleaning: asyncio.Task[tuple[int, int]] | None = None

    async def admit(self, token_hash: bytes, limit: RateLimit) -> Admitted:
        row = await bounded(
            self.pool.fetchrow(_ADMIT, token_hash, limit.rate_per_second, limit.burst),
            self.timeout,
        )
        self._maybe_clean()
        if row is None:
            return Admitted(None)
        view = TokenView(*row[:7])
        level, granted = row[7], row[8]
        return Admitted(view, 0.0 if granted else (1 - level) / limit.rate_per_second)

    async def miss(self, token_id: UUID, limit: int, window_seconds: float) -> int | None:
        crossed = await bounded(
            self.pool.fetchval(_MISS, token_id, limit, window_seconds), self.timeout
        )
        return int(crossed) or None

    def _maybe_clean(self) -> None:
        """Start a clean-up in the background once every CLEAN_EVERY seconds;
        the request that triggers it does not wait for it."""
        now = time.monotonic()
        if now - self._cleaned < CLEAN_EVERY or (self._cleaning and not self._cleaning.done()):
            return
        self._cleaned = now
        self._cleaning = asyncio.create_task(self.clean())

    async def clean(self) -> tuple[int, int]:
        """Delete the rows that no longer change any answer; how many of each."""
        try:
            buckets = await bounded(
                self.pool.execute(_CLEAN_BUCKETS, self.keep_seconds), self.timeout
            )
            windows = await bounded(
                self.pool.execute(_CLEAN_WINDOWS, self.keep_seconds), self.timeout
            )
        except Exception as e:  # the next clean-up will do it; requests are unaffected
            log.warning("admission clean-up failed: %r", e)
            return (0, 0)
        return int(buckets.split()[-1]), int(windows.split()[-1])
