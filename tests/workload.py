"""A random but reproducible mix of bookings, cancellations and reschedules,
run through the service layer, for tests that compare read models."""

import random
from datetime import datetime, timedelta
from uuid import UUID

from domain.agenda import AgendaDay, Appointment, book
from domain.errors import DomainError
from domain.ledger import AccessRecord, Disclosure
from domain.values import Source
from infra.http.keys import Services
from tests.conftest import T0
from tests.world import META, ROOT, World

# Wednesday 2026-12-02, 09:00 Paris, and the following days.
FIRST_SLOT = T0 + timedelta(days=1, hours=1)


def consultation(
    day: AgendaDay, patient_id: UUID, establishment_id: UUID, start: datetime
) -> Appointment:
    """A patient's 20-minute consultation booked on `day`, straight on the domain."""
    return book(
        day,
        patient_id=patient_id,
        establishment_id=establishment_id,
        motive_id="consultation",
        duration_minutes=20,
        start=start,
        end=start + timedelta(minutes=20),
        source=Source.PATIENT,
    )


def random_start(rng: random.Random) -> datetime:
    day = rng.randrange(0, 14)
    minutes = rng.choice([0, 20, 40, 60, 80, 100, 120, 140, 300, 320, 340, 360])
    return FIRST_SLOT + timedelta(days=day, minutes=minutes)


async def run_workload(services: Services, world: World, operations: int, seed: int) -> int:
    """Apply `operations` random commands; return how many succeeded."""
    rng = random.Random(seed)
    booked: list[UUID] = []
    done = 0
    practitioners = [world.practitioner, world.other_practitioner]
    patients = [world.patient, world.other_patient]
    for _ in range(operations):
        roll = rng.random()
        try:
            if roll < 0.6 or not booked:
                result = await services.booking.book(
                    ROOT,
                    META,
                    practitioner_id=rng.choice(practitioners),
                    motive_id=rng.choice(["consultation", "long"]),
                    start=random_start(rng),
                    patient_id=rng.choice(patients),
                )
                booked.append(result.appointment.id)
                # The access it is, so the ledger-fed read models have rows too.
                a = result.appointment
                item = Disclosure(
                    record_id=str(a.id),
                    patient_id=str(a.patient_id),
                    identified=True,
                    practitioner_id=str(a.practitioner_id),
                    establishment_id=str(a.establishment_id),
                    fields=("id", "patient_id", "start"),
                )
                await services.ledger.record(
                    AccessRecord(
                        actor_kind="admin",
                        actor_id=str(ROOT.id),
                        action="create",
                        resource_type="appointment",
                        record_ids=(item.record_id,),
                        patient_ids=(str(a.patient_id),),
                        fields=item.fields,
                        items=(item,),
                        at=services.clock.now(),
                        as_of=result.position,
                    )
                )
            elif roll < 0.8:
                await services.booking.cancel(
                    ROOT, META, booked.pop(rng.randrange(len(booked))), "changed plans"
                )
            else:
                old = booked.pop(rng.randrange(len(booked)))
                moved = await services.booking.reschedule(ROOT, META, old, random_start(rng))
                booked.append(moved.appointment.id)
            done += 1
        except DomainError:
            pass  # taken slots and the like: refusals are part of the mix
    return done
