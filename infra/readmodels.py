"""The ReadModels port on the projections' tables, and read-your-writes waits."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from datetime import date, datetime
from typing import TypeVar
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.utils import get_topic

from domain.agenda import ERASURE_REASON
from domain.directory import Patient
from domain.ledger import AccessRecord
from domain.values import Absence, BookingPolicy, Interval, Motive, OpeningHours
from infra import access_index
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, EventStore
from infra.projector import CHECKPOINTS, Projector
from infra.schema import SCHEMA
from projections import READ_SCHEMA
from projections.patient_view import PatientViewProjection
from services.ports import (
    AccessLogEntry,
    AgendaEntry,
    EstablishmentRow,
    LedgerQuery,
    PatientAppointment,
    PractitionerRow,
)

T = TypeVar("T")
# The connection of an `exactly` read in progress: every read-model query of
# that read runs on it, inside the snapshot its checkpoint was read in.
_SNAPSHOT: ContextVar["asyncpg.pool.PoolConnectionProxy[asyncpg.Record] | None"] = ContextVar(
    "carnet_snapshot", default=None
)


class NotCaughtUp(Exception):
    """The read model has not reached the position the client asked for in time."""


def _table(model: str, name: str) -> str:
    return f"{READ_SCHEMA}.{model}_{name}"


_motives = msgspec.json.Decoder(tuple[Motive, ...])
_hours = msgspec.json.Decoder(tuple[OpeningHours, ...])
_absences = msgspec.json.Decoder(tuple[Absence, ...])
_policy = msgspec.json.Decoder(BookingPolicy)


def _practitioner(r: asyncpg.Record) -> PractitionerRow:
    return PractitionerRow(
        id=r["id"],
        name=r["name"],
        specialty=r["specialty"],
        establishment_id=r["establishment_id"],
        city=r["city"],
        timezone=r["timezone"],
        motives=_motives.decode(r["motives"]),
        hours=_hours.decode(r["hours"]),
        absences=_absences.decode(r["absences"]),
        policy=_policy.decode(r["policy"]),
    )


class PostgresReadModels:
    def __init__(self, pool: asyncpg.Pool, max_wait: float = 5.0) -> None:
        self.pool = pool
        self.store = EventStore(pool)
        self.mapper = TypedMapper(self.store.keyring)
        self.max_wait = max_wait  # how long a read-your-writes request may wait

    async def wait_for(
        self, position: int, projections: Sequence[str], within: float | None = None
    ) -> None:
        """Return once every named projection has applied the event at `position`."""
        target = await self.store.checkpoint_of(position)
        if target is None:
            return  # no such event: nothing to wait for
        deadline = time.monotonic() + (self.max_wait if within is None else within)
        delay = 0.002
        while True:
            rows = await self.pool.fetch(
                f"SELECT tx, position FROM {CHECKPOINTS} WHERE name = ANY($1::text[])",
                list(projections),
            )
            reached = [Checkpoint(int(r[0]), int(r[1])) >= target for r in rows]
            if len(reached) == len(projections) and all(reached):
                return
            if time.monotonic() > deadline:
                raise NotCaughtUp(f"read model behind position {position}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def position(self, projection: str) -> int:
        """The log position a read model's rows reflect right now."""
        return int(
            await self.pool.fetchval(
                f"SELECT position FROM {CHECKPOINTS} WHERE name = $1", projection
            )
            or 0
        )

    def _db(self) -> "asyncpg.Pool | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]":
        return _SNAPSHOT.get() or self.pool

    async def exactly(
        self, projection: str, query: Callable[[], Awaitable[T]]
    ) -> tuple[T, Checkpoint]:
        """Run a read and tell the checkpoint its rows reflected, exactly.

        The projector moves rows and checkpoint in one transaction; reading the
        checkpoint and then the rows in one repeatable-read snapshot therefore
        gives rows that are exactly those of that checkpoint, however busy the
        projector is. (The access ledger replays from it.)
        """
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                f"SELECT tx, position FROM {CHECKPOINTS} WHERE name = $1", projection
            )
            token = _SNAPSHOT.set(conn)
            try:
                result = await query()
            finally:
                _SNAPSHOT.reset(token)
        return result, Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint(0, 0)

    async def establishment(self, establishment_id: UUID) -> EstablishmentRow | None:
        row = await self._db().fetchrow(
            f"SELECT * FROM {_table('directory', 'establishments')} WHERE id = $1",
            establishment_id,
        )
        return EstablishmentRow(**dict(row)) if row else None

    async def establishments(self, city: str | None, limit: int) -> list[EstablishmentRow]:
        rows = await self._db().fetch(
            f"SELECT * FROM {_table('directory', 'establishments')} "
            "WHERE $1::text IS NULL OR lower(city) = lower($1) ORDER BY name, id LIMIT $2",
            city,
            limit,
        )
        return [EstablishmentRow(**dict(r)) for r in rows]

    async def practitioners(
        self,
        model: str,
        *,
        ids: Sequence[UUID] | None = None,
        specialty: str | None = None,
        city: str | None = None,
        limit: int = 50,
    ) -> list[PractitionerRow]:
        if model not in ("directory", "availability"):
            raise ValueError(model)
        rows = await self._db().fetch(
            f"""SELECT * FROM {_table(model, "practitioners")}
            WHERE ($1::uuid[] IS NULL OR id = ANY($1))
              AND ($2::text IS NULL OR specialty = lower($2))
              AND ($3::text IS NULL OR lower(city) = lower($3))
            ORDER BY name, id LIMIT $4""",
            list(ids) if ids is not None else None,
            specialty,
            city,
            limit,
        )
        return [_practitioner(r) for r in rows]

    async def booked(
        self, practitioner_ids: Sequence[UUID], first: date, last: date
    ) -> dict[UUID, list[Interval]]:
        rows = await self._db().fetch(
            f"""SELECT practitioner_id, start_at, end_at FROM {_table("availability", "bookings")}
            WHERE practitioner_id = ANY($1::uuid[]) AND day BETWEEN $2 AND $3""",
            list(practitioner_ids),
            first,
            last,
        )
        booked: dict[UUID, list[Interval]] = {}
        for r in rows:
            booked.setdefault(r[0], []).append(Interval(r[1], r[2]))
        return booked

    async def agenda(
        self, practitioner_id: UUID, day: date
    ) -> tuple[UUID, list[AgendaEntry]] | None:
        owner = await self._db().fetchval(
            f"SELECT establishment_id FROM {_table('agenda', 'practitioners')} WHERE id = $1",
            practitioner_id,
        )
        if owner is None:
            return None
        rows = await self._db().fetch(
            f"""SELECT id, start_at, end_at, motive_id, motive_name, patient_id, patient_name,
                status, source, replaces, replaced_by
            FROM {_table("agenda", "appointments")}
            WHERE practitioner_id = $1 AND day = $2 ORDER BY start_at, id""",
            practitioner_id,
            day,
        )
        return owner, [AgendaEntry(*r) for r in rows]

    async def access_log(self, patient_id: UUID, limit: int) -> list[AccessLogEntry]:
        rows = await self._db().fetch(
            f"""SELECT sequence, at, actor, action, resource_type, outcome, fields, identified
            FROM {_table("access_log", "entries")}
            WHERE patient_id = $1 ORDER BY sequence DESC LIMIT $2""",
            patient_id,
            limit,
        )
        return [AccessLogEntry(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6]), r[7]) for r in rows]

    async def ledger_entries(
        self, query: LedgerQuery, *, fresh: bool = True
    ) -> list[tuple[int, AccessRecord]]:
        """Found through the access index, read from the log (the ledger is the evidence).

        `fresh`: first wait (up to `max_wait`, else NotCaughtUp) until the index
        holds every entry committed before the call, so that an entry is found as
        soon as the request that wrote it has been answered.
        """
        snapshot = _SNAPSHOT.get()
        if snapshot is not None:
            return await access_index.find(snapshot, query, self.mapper)
        if fresh:
            try:
                await access_index.caught_up(self.pool, self.max_wait)
            except access_index.IndexBehind as e:
                raise NotCaughtUp(str(e)) from None
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await access_index.find(conn, query, self.mapper)

    async def _patient_view_complete(self) -> None:
        """Bring the patient view up to the log's head (for an erasure or the retention
        policy, which must not miss a booking): its workers, if any, serialise with
        this on the projection's lock, so catching up here is safe."""
        try:
            await Projector(self.pool, PatientViewProjection()).catch_up(within=self.max_wait)
        except TimeoutError as e:
            raise NotCaughtUp(str(e)) from None

    async def future_booked(self, patient_id: UUID, now: datetime) -> list[UUID]:
        """PatientAppointments: once the patient view holds the whole log."""
        await self._patient_view_complete()
        rows = await self.pool.fetch(
            f"""SELECT id FROM {_table("patient_view", "appointments")}
            WHERE patient_id = $1 AND status = 'booked' AND start_at > $2
            ORDER BY start_at, id""",
            patient_id,
            now,
        )
        return [r[0] for r in rows]

    async def cancelled_on_erasure(self, patient_id: UUID) -> list[UUID]:
        """PatientAppointments: once the patient view holds the whole log."""
        await self._patient_view_complete()
        rows = await self.pool.fetch(
            f"""SELECT id FROM {_table("patient_view", "appointments")}
            WHERE patient_id = $1 AND cancellation_reason = $2 ORDER BY start_at, id""",
            patient_id,
            ERASURE_REASON,
        )
        return [r[0] for r in rows]

    async def past_retention(self, cutoff: datetime, limit: int) -> list[UUID]:
        """RetentionCandidates: once the patient view holds the whole log."""
        await self._patient_view_complete()
        rows = await self.pool.fetch(
            f"""SELECT r.originator_id FROM {SCHEMA}.events r
            WHERE r.topic = $1 AND r.recorded_at < $2
              AND NOT EXISTS (SELECT 1 FROM {_table("patient_view", "appointments")} a
                              WHERE a.patient_id = r.originator_id AND a.end_at >= $2)
              AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.subject_keys k
                              WHERE k.subject_id = r.originator_id AND k.wrapped IS NULL)
            ORDER BY r.position LIMIT $3""",
            get_topic(vars(Patient)["Registered"]),
            cutoff,
            limit,
        )
        return [r[0] for r in rows]

    async def patient_appointments(self, patient_id: UUID) -> list[PatientAppointment]:
        rows = await self._db().fetch(
            f"""SELECT id, practitioner_id, practitioner_name, specialty, establishment_id,
                establishment_name, address, city, motive_id, start_at, end_at, status,
                replaces, replaced_by, cancellation_reason
            FROM {_table("patient_view", "appointments")}
            WHERE patient_id = $1 ORDER BY start_at, id""",
            patient_id,
        )
        return [PatientAppointment(*r) for r in rows]
