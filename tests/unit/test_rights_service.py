"""The erasure use case on fakes: the order of its steps, what a repeat resumes,
who may ask, and the retention policy's reach."""

from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID, uuid4

import pytest

from domain import agenda
from domain.agenda import AgendaDay, Appointment, agenda_day_id
from domain.credentials import Token
from domain.directory import Establishment, Patient, Practitioner
from domain.errors import DataErased, NotFound
from domain.values import Motive, OpeningHours, Sex, Source, Status
from services.actors import Actor, ActorKind
from services.ports import Metadata, TokenQuery
from services.rights import RightsService
from tests.conftest import FakeClock
from tests.unit.fakes import FakeRepository, FakeTokenStore

META = Metadata(actor_kind="test", actor_id="t")
NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
NINE = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


class Steps:
    """The fakes of the ports the repository does not cover, logging their calls."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.log: list[str] = []
        self.booked: list[UUID] = []
        self.fail_shred = False

    async def future_booked(self, patient_id: UUID, now: datetime) -> list[UUID]:
        self.log.append("list")
        return [
            i
            for i in self.booked
            if (a := self.repo._replay(Appointment, i)) is not None
            and a.status is Status.BOOKED
            and a.start > now
        ]

    async def cancelled_on_erasure(self, patient_id: UUID) -> list[UUID]:
        return [
            i
            for i in self.booked
            if (a := self.repo._replay(Appointment, i)) is not None
            and a.cancellation_reason == agenda.ERASURE_REASON
        ]

    async def shred(self, subject: UUID) -> None:
        self.log.append("shred")
        if self.fail_shred:
            raise RuntimeError("the database went away")

    async def past_retention(self, cutoff: datetime, limit: int) -> list[UUID]:
        return []


@pytest.fixture
async def world():
    repo = FakeRepository()
    e = Establishment.register("Cabinet", "1 rue A", "Paris")
    p = Practitioner.register("Dr A", "GP", e)
    p.add_motive(Motive("consultation", "Consultation", 20))
    p.set_opening_hours(tuple(OpeningHours(d, time(9), time(12)) for d in range(5)))
    ann = Patient.register("Ann", "X", date(1990, 1, 1), Sex.OTHER, "a@example.org", "+33 6 1")
    await repo.save([e, p, ann], META)
    day = AgendaDay(practitioner_id=p.id, day=NINE.date())
    assert day.id == agenda_day_id(p.id, NINE, p.timezone)
    appointment = agenda.book(
        day,
        patient_id=ann.id,
        establishment_id=e.id,
        motive_id="consultation",
        duration_minutes=20,
        start=NINE,
        end=NINE + timedelta(minutes=20),
        source=Source.PATIENT,
    )
    await repo.save([day, appointment], META)
    tokens = FakeTokenStore(repo)
    token = Token("00" * 32, "patient", ann.id, None, "Ann X", None)
    await tokens.save(token, META)
    steps = Steps(repo)
    steps.booked.append(appointment.id)
    service = RightsService(repo, FakeClock(NOW), steps, tokens, steps, None, steps)
    return service, repo, tokens, steps, ann, appointment


async def test_an_erasure_shreds_first_then_records_cancels_and_revokes(world):
    service, repo, tokens, steps, ann, appointment = world
    done = await service.erase_patient(Actor(ActorKind.PATIENT, ann.id), META, ann.id)
    assert steps.log == ["shred", "list"]
    assert (done.cancelled, done.tokens_revoked, done.already) == ((appointment.id,), 1, False)
    patient = repo._replay(Patient, ann.id)
    assert patient is not None and patient.erased and patient.first_name is None
    cancelled = repo._replay(Appointment, appointment.id)
    assert cancelled is not None and cancelled.status is Status.CANCELLED
    assert cancelled.cancellation_reason == agenda.ERASURE_REASON
    day = repo._replay(AgendaDay, agenda_day_id(cancelled.practitioner_id, NINE, "Europe/Paris"))
    assert day is not None and day.taken() == []
    rows = await tokens.tokens(TokenQuery(actor_ids=frozenset({ann.id})))
    assert [r.state for r in rows] == ["revoked"]
    with pytest.raises(DataErased):
        patient.change_contact_details("b@example.org", "+33 6 2")


async def test_a_repeat_after_a_failed_shred_finishes_the_erasure(world):
    service, repo, _tokens, steps, ann, appointment = world
    steps.fail_shred = True
    with pytest.raises(RuntimeError):
        await service.erase_patient(Actor(ActorKind.ADMIN, uuid4()), META, ann.id)
    patient = repo._replay(Patient, ann.id)
    assert patient is not None and not patient.erased  # nothing recorded before the key went
    steps.fail_shred = False
    done = await service.erase_patient(Actor(ActorKind.ADMIN, uuid4()), META, ann.id)
    assert done.cancelled == (appointment.id,) and not done.already
    again = await service.erase_patient(Actor(ActorKind.ADMIN, uuid4()), META, ann.id)
    # A repeat reports what the erasure did, not what it did itself: nothing new.
    assert (again.already, again.cancelled, again.tokens_revoked) == (True, (appointment.id,), 1)


@pytest.mark.parametrize(
    "kind", [ActorKind.PRACTITIONER, ActorKind.STAFF, ActorKind.INTEGRATION, ActorKind.ANALYST]
)
async def test_nobody_else_erases_a_patient_and_nothing_happens(world, kind):
    service, _repo, _tokens, steps, ann, _appointment = world
    with pytest.raises(NotFound):
        await service.erase_patient(Actor(kind, uuid4()), META, ann.id)
    other_patient = Actor(ActorKind.PATIENT, uuid4())
    with pytest.raises(NotFound):
        await service.erase_patient(other_patient, META, ann.id)
    assert steps.log == []


async def test_erasing_an_unknown_patient_shreds_nothing(world):
    service, _repo, _tokens, steps, _ann, _appointment = world
    with pytest.raises(NotFound):
        await service.erase_patient(Actor(ActorKind.ADMIN, uuid4()), META, uuid4())
    assert steps.log == []
