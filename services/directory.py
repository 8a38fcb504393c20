"""Use cases for establishments, practitioners and patients."""

from dataclasses import dataclass
from datetime import date
from uuid import UUID

from domain.directory import Establishment, Patient, Practitioner
from domain.errors import Forbidden, InvalidValue, NotFound
from domain.values import Absence, BookingPolicy, Motive, OpeningHours, Sex
from services.actors import Actor
from services.common import get_or_404, require, retrying
from services.policy import Action, Kind, Resource, allowed
from services.ports import Clock, Metadata, Repository


@dataclass(frozen=True)
class Saved:
    id: UUID
    position: int


class DirectoryService:
    def __init__(self, repo: Repository, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock

    # -- establishments ----------------------------------------------------

    async def register_establishment(
        self, actor: Actor, meta: Metadata, name: str, address: str, city: str, timezone: str
    ) -> Saved:
        if not allowed(actor, Action.CREATE, Resource(Kind.ESTABLISHMENT)):
            raise Forbidden("only an admin registers establishments")
        establishment = Establishment.register(name, address, city, timezone)
        return Saved(establishment.id, await self.repo.save([establishment], meta))

    async def establishment(self, actor: Actor, establishment_id: UUID) -> Establishment:
        return await get_or_404(self.repo, Establishment, establishment_id, "establishment_id")

    # -- practitioners -----------------------------------------------------

    async def register_practitioner(
        self,
        actor: Actor,
        meta: Metadata,
        *,
        name: str,
        specialty: str,
        establishment_id: UUID,
        policy: BookingPolicy,
        motives: list[Motive],
        hours: tuple[OpeningHours, ...],
    ) -> Saved:
        establishment = await get_or_404(
            self.repo, Establishment, establishment_id, "establishment_id"
        )
        resource = Resource(Kind.PRACTITIONER, establishment_id=establishment.id)
        require(actor, Action.CREATE, resource, "establishment_id")
        practitioner = Practitioner.register(name, specialty, establishment, policy)
        for i, motive in enumerate(motives):
            try:
                practitioner.add_motive(motive)
            except InvalidValue as e:
                raise InvalidValue(e.detail, field=f"motives[{i}].{e.field}") from None
        if hours:
            practitioner.set_opening_hours(hours)
        return Saved(practitioner.id, await self.repo.save([practitioner], meta))

    async def practitioner(self, actor: Actor, practitioner_id: UUID) -> Practitioner:
        return await get_or_404(self.repo, Practitioner, practitioner_id, "practitioner_id")

    async def _managed_practitioner(self, actor: Actor, practitioner_id: UUID) -> Practitioner:
        practitioner = await get_or_404(self.repo, Practitioner, practitioner_id, "practitioner_id")
        resource = Resource(
            Kind.PRACTITIONER,
            practitioner_id=practitioner.id,
            establishment_id=practitioner.establishment_id,
        )
        if not allowed(actor, Action.MANAGE, resource):
            raise Forbidden("you cannot change this practitioner")
        return practitioner

    async def add_motive(
        self, actor: Actor, meta: Metadata, practitioner_id: UUID, motive: Motive
    ) -> Saved:
        async def attempt() -> Saved:
            practitioner = await self._managed_practitioner(actor, practitioner_id)
            practitioner.add_motive(motive)
            return Saved(practitioner.id, await self.repo.save([practitioner], meta))

        return await retrying(attempt)

    async def set_opening_hours(
        self, actor: Actor, meta: Metadata, practitioner_id: UUID, hours: tuple[OpeningHours, ...]
    ) -> Saved:
        async def attempt() -> Saved:
            practitioner = await self._managed_practitioner(actor, practitioner_id)
            practitioner.set_opening_hours(hours)
            return Saved(practitioner.id, await self.repo.save([practitioner], meta))

        return await retrying(attempt)

    async def add_absence(
        self, actor: Actor, meta: Metadata, practitioner_id: UUID, absence: Absence
    ) -> Saved:
        async def attempt() -> Saved:
            practitioner = await self._managed_practitioner(actor, practitioner_id)
            practitioner.add_absence(absence)
            return Saved(practitioner.id, await self.repo.save([practitioner], meta))

        return await retrying(attempt)

    # -- patients ----------------------------------------------------------

    async def register_patient(
        self,
        actor: Actor,
        meta: Metadata,
        *,
        first_name: str,
        last_name: str,
        birth_date: date,
        sex: Sex,
        email: str,
        phone: str,
    ) -> Saved:
        if not allowed(actor, Action.CREATE, Resource(Kind.PATIENT)):
            raise Forbidden("only staff and admins register patients")
        patient = Patient.register(
            first_name,
            last_name,
            birth_date,
            sex,
            email,
            phone,
            today=self.clock.now().date(),
            # A desk's patients are known to its practice, which may book for them.
            registered_by_establishment=actor.establishment_id,
        )
        return Saved(patient.id, await self.repo.save([patient], meta))

    async def patient(self, actor: Actor, patient_id: UUID) -> Patient:
        patient = await self.repo.get(Patient, patient_id)
        if patient is None or not allowed(
            actor, Action.READ, Resource(Kind.PATIENT, patient_id=patient_id)
        ):
            raise NotFound("no such patient", field="patient_id")
        patient.require_not_erased()
        return patient

    async def change_contact_details(
        self, actor: Actor, meta: Metadata, patient_id: UUID, email: str, phone: str
    ) -> Saved:
        async def attempt() -> Saved:
            patient = await self.patient(actor, patient_id)
            require(
                actor, Action.MANAGE, Resource(Kind.PATIENT, patient_id=patient.id), "patient_id"
            )
            patient.change_contact_details(email, phone)
            if not patient.pending_events:
                return Saved(patient.id, 0)
            return Saved(patient.id, await self.repo.save([patient], meta))

        return await retrying(attempt)
