"""Patients' rights on an immutable log: erasure by crypto-shredding (GDPR Art. 17),
access and portability (Art. 15 and 20).

An erasure, in this order, each step safe to run again (a repeated request
resumes one that stopped half-way):

1. their data key is destroyed: every personal field they ever gave reads
   as erased, in every copy of the log (PostgreSQL and the NATS stream),
   and nothing written after it (this erasure's own access entries
   included) holds anything readable of theirs;
2. `Patient.Erased` is recorded: from then on nothing can be booked or
   changed for the patient (a booking decided on the patient as they were
   fails its append's check and is decided again, and refused), and the
   read models show them as erased;
3. their appointments still to come are cancelled (`CancelledOnErasure`),
   the practitioners' agendas freed, once the patient view holds every
   booking made before step 2;
4. their tokens are revoked.

What the law makes Carnet keep (the access ledger's record ids, times and
categories) stays: it holds no plaintext personal data.
"""

from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

from domain import agenda
from domain.agenda import AgendaDay, Appointment, Status, agenda_day_id
from domain.credentials import Token
from domain.directory import Patient, Practitioner
from domain.errors import Forbidden, NotFound
from domain.values import Source
from services.actors import Actor, ActorKind
from services.common import retrying, typed
from services.ports import (
    AccessLogEntry,
    Clock,
    Metadata,
    PatientAppointment,
    PatientAppointments,
    ReadModels,
    Repository,
    RetentionCandidates,
    Shredder,
    TokenQuery,
    TokenStore,
)

ERASED_TOKEN_REASON = "the patient's data was erased"
# The most an export lists of a patient's access log (newest first).
EXPORT_ACCESS_LOG = 100_000


@dataclass(frozen=True)
class PatientData:
    id: UUID
    first_name: str | None
    last_name: str | None
    birth_date: date | None
    sex: str | None
    email: str | None
    phone: str | None
    registered_at: datetime
    registered_by_establishment: UUID | None


@dataclass(frozen=True)
class ContactChange:
    """The contact details as they became at `at` (registration, then each change)."""

    at: datetime
    email: str | None
    phone: str | None


@dataclass(frozen=True)
class PatientExport:
    """Everything Carnet holds about a patient (GDPR Art. 15 and 20)."""

    patient: PatientData
    appointments: list[PatientAppointment]
    contact_history: list[ContactChange]
    access_log: list[AccessLogEntry]


@dataclass(frozen=True)
class Erasure:
    patient_id: UUID
    position: int  # the log position of the Patient.Erased event (0: recorded before)
    cancelled: tuple[UUID, ...]  # appointments the erasure cancelled (by any request)
    tokens_revoked: int  # tokens the erasure revoked (by any request)
    already: bool  # the patient was erased before this request


class RightsService:
    def __init__(
        self,
        repo: Repository,
        clock: Clock,
        appointments: PatientAppointments,
        tokens: TokenStore,
        shredder: Shredder,
        read: ReadModels,
        retention: RetentionCandidates,
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.appointments = appointments
        self.read = read
        self.retention = retention
        self.tokens = tokens
        self.shredder = shredder

    async def erase_patient(self, actor: Actor, meta: Metadata, patient_id: UUID) -> Erasure:
        """The patient themselves, or an admin acting for the data-protection officer."""
        own = actor.kind is ActorKind.PATIENT and actor.id == patient_id
        if not own and actor.kind is not ActorKind.ADMIN:
            raise NotFound("no such patient", field="patient_id")
        return await self._erase(meta, patient_id, actor.source)

    async def apply_retention(
        self, meta: Metadata, cutoff: datetime, dry_run: bool = False, batch: int = 500
    ) -> list[UUID]:
        """The retention policy: every patient with nothing at or after `cutoff`
        (registered before it, no appointment ending after it) is erased; which."""
        done: list[UUID] = []
        while True:
            found = await self.retention.past_retention(cutoff, batch)
            if dry_run or not found:
                return done + found
            for patient_id in found:
                await self._erase(meta, patient_id, Source.STAFF)
                done.append(patient_id)

    async def _erase(self, meta: Metadata, patient_id: UUID, by: Source) -> Erasure:
        if typed(Patient, await self.repo.get(Patient, patient_id)) is None:
            raise NotFound("no such patient", field="patient_id")
        # The key first: whatever this erasure writes after it (its own access
        # entries included) holds nothing readable of the patient.
        await self.shredder.shred(patient_id)

        async def record() -> tuple[int, bool]:
            patient = typed(Patient, await self.repo.get(Patient, patient_id))
            assert patient is not None
            if patient.erased:
                return 0, True
            patient.erase()
            return await self.repo.save([patient], meta), False

        position, already = await retrying(record)
        for appointment_id in await self.appointments.future_booked(patient_id, self.clock.now()):
            await self._cancel(meta, appointment_id, by)
        await self._revoke_tokens(meta, patient_id)
        # What the erasure did, whichever request (this one, or one running beside it) did it.
        cancelled = tuple(await self.appointments.cancelled_on_erasure(patient_id))
        return Erasure(patient_id, position, cancelled, await self._revoked(patient_id), already)

    async def export(self, actor: Actor) -> PatientExport:
        """GET /me/export: the patient's own data, from the log and the read models."""
        if actor.kind is not ActorKind.PATIENT:
            raise Forbidden("only a patient's own token exports their data")
        history = await self.repo.history(actor.id)
        patient = typed(Patient, await self.repo.get(Patient, actor.id))
        if patient is None or not history:
            raise NotFound("no such patient", field="patient_id")
        patient.require_not_erased()
        contacts = [
            ContactChange(e.timestamp, e.email, e.phone) for e in history if hasattr(e, "email")
        ]
        data = PatientData(
            id=patient.id,
            first_name=patient.first_name,
            last_name=patient.last_name,
            birth_date=patient.birth_date,
            sex=patient.sex.value if patient.sex is not None else None,
            email=patient.email,
            phone=patient.phone,
            registered_at=history[0].timestamp,
            registered_by_establishment=patient.registered_by_establishment,
        )
        return PatientExport(
            patient=data,
            appointments=await self.read.patient_appointments(actor.id),
            contact_history=contacts,
            access_log=await self.read.access_log(actor.id, EXPORT_ACCESS_LOG),
        )

    async def _cancel(self, meta: Metadata, appointment_id: UUID, by: Source) -> bool:
        async def attempt() -> bool:
            appointment = typed(Appointment, await self.repo.get(Appointment, appointment_id))
            if appointment is None or appointment.status is not Status.BOOKED:
                return False
            practitioner = typed(
                Practitioner, await self.repo.get(Practitioner, appointment.practitioner_id)
            )
            assert practitioner is not None
            day_id = agenda_day_id(
                appointment.practitioner_id, appointment.start, practitioner.timezone
            )
            day = typed(AgendaDay, await self.repo.get(AgendaDay, day_id))
            assert day is not None
            agenda.cancel_on_erasure(appointment, day, by)
            await self.repo.save([day, appointment], meta)
            return True

        return await retrying(attempt)

    async def _revoked(self, patient_id: UUID) -> int:
        rows = await self.tokens.tokens(
            TokenQuery(
                actor_ids=frozenset({patient_id}), states=frozenset({"revoked"}), limit=10**6
            )
        )
        return sum(r.reason == ERASED_TOKEN_REASON for r in rows)

    async def _revoke_tokens(self, meta: Metadata, patient_id: UUID) -> int:
        revoked = 0
        after = 0
        while True:
            rows = await self.tokens.tokens(
                TokenQuery(
                    actor_ids=frozenset({patient_id}),
                    states=frozenset({"active", "suspended"}),
                    after=after,
                )
            )
            if not rows:
                return revoked
            after = rows[-1].position
            for row in rows:

                async def attempt(token_id: UUID = row.token_id) -> int:
                    token = typed(Token, await self.repo.get(Token, token_id))
                    if token is None or token.state == "revoked":
                        return 0
                    token.revoke(ERASED_TOKEN_REASON)
                    await self.tokens.save(token, meta)
                    return 1

                revoked += await retrying(attempt)
