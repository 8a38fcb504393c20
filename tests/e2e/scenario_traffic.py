"""Ordinary days at Carnet: desks, patients and practice software B book,
patients cancel and read their appointments, desks reschedule, and both
softwares sync their practitioners' agendas from their usual address.

Every choice is drawn from the scenario's seeded random generator, and every
booking picks a slot the diary says is free, so a run is reproducible.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import partial

from tests.e2e.scenario_world import PARIS, Cast, Patient, Slot, instant, local_start, remember

Op = Callable[[], Awaitable[None]]
HORIZON = 14  # bookings are made for the next two weeks
GRANTS = {"a": ("contact", "masked"), "b": ("b",)}  # whose agendas each software reads


def morning(cast: Cast, day: date, hour: int = 8) -> None:
    """Move the app's clock forward to `hour` o'clock in Paris on `day`."""
    target = datetime.combine(day, time(hour), PARIS).astimezone(UTC)
    ahead = (target - cast.net.clock.now()).total_seconds()
    if ahead > 0:
        cast.net.clock.advance(seconds=ahead)


def business_days(first: date, count: int) -> list[date]:
    days: list[date] = []
    day = first
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def _pick_day(cast: Cast, today: date) -> date:
    day = today + timedelta(days=cast.net.rng.randint(1, HORIZON))
    return day + timedelta(days=(7 - day.weekday()) % 7) if day.weekday() >= 5 else day


def _pick_units(cast: Cast, practitioner: str, day: date) -> tuple[str, tuple[int, ...]] | None:
    rng = cast.net.rng
    motive, length = ("long", 2) if rng.random() < 0.15 else ("consultation", 1)
    free = cast.diary.free(practitioner, day, length)
    if not free:
        return None
    unit = rng.choice(free)
    return motive, tuple(range(unit, unit + length))


async def book(cast: Cast, today: date, by: str) -> None:
    """One booking by a desk ("desk"), a patient's app ("app") or software B ("b")."""
    rng = cast.net.rng
    if by == "app":
        patient = rng.choice([p for p in cast.patients if p.app])
        practitioner = rng.choice(list(cast.registry.practitioners))
        agent = patient.app
    else:
        practice = rng.choice([e for e in cast.practices if by == "desk" or e.grant == "b"])
        known = [p for p in cast.patients if practice.id in p.known_at]
        if not known:
            return
        patient, practitioner = rng.choice(known), rng.choice(practice.practitioners)
        agent = practice.desk if by == "desk" else cast.software_b
    day = _pick_day(cast, today)
    picked = _pick_units(cast, practitioner, day)
    if picked is None or agent is None:
        return
    motive, units = picked
    body = {
        "practitioner_id": practitioner,
        "motive_id": motive,
        "start": instant(local_start(day, units[0])),
    }
    if by != "app":
        body["patient_id"] = patient.id
    answer = await agent.post("/appointments", body)
    remember(cast, answer.body, patient, units)


def _future(cast: Cast, today: date) -> list[Slot]:
    return [s for s in cast.diary.booked() if s.day > today]


async def cancel(cast: Cast, slot: Slot, reason: str = "empêchement") -> None:
    """The patient cancels from their app, or asks the desk to."""
    if slot.patient.app and cast.net.rng.random() < 0.6:
        agent = slot.patient.app
    else:
        agent = cast.practice_of(slot.practitioner_id).desk
    await agent.post(f"/appointments/{slot.appointment_id}/cancel", {"reason": reason}, (200,))
    cast.diary.release(slot.appointment_id)


async def reschedule(cast: Cast, slot: Slot, today: date) -> None:
    """The desk moves an appointment to another free slot of the same practitioner."""
    day = _pick_day(cast, today)
    free = cast.diary.free(slot.practitioner_id, day, len(slot.units))
    if not free:
        return
    unit = cast.net.rng.choice(free)
    desk = cast.practice_of(slot.practitioner_id).desk
    answer = await desk.post(
        f"/appointments/{slot.appointment_id}/reschedule",
        {"start": instant(local_start(day, unit))},
    )
    cast.diary.release(slot.appointment_id)
    remember(cast, answer.body, slot.patient, tuple(range(unit, unit + len(slot.units))))


async def sync(cast: Cast, software: str, days: tuple[date, ...]) -> None:
    """One sync run of a legitimate software: every agenda it may read, from its usual address."""
    agent = cast.software_a if software == "a" else cast.software_b
    for practitioner in cast.practitioners(*GRANTS[software]):
        for day in days:
            cast.net.tick(0.5, 3)
            await agent.get(f"/practitioners/{practitioner}/agenda", date=day.isoformat())


async def read_own(patient: Patient) -> None:
    assert patient.app is not None
    await patient.app.get(f"/patients/{patient.id}/appointments")


def day_ops(cast: Cast, today: date, bookings: int) -> list[Op]:
    """An ordinary day's requests, in the order they will be sent."""
    rng, ops = cast.net.rng, list[Op]()
    for _ in range(bookings):
        by = rng.choices(["desk", "app", "b"], weights=[5, 3, 2])[0]
        ops.append(partial(book, cast, today, by))
    # Each software syncs today's and tomorrow's agendas once a day.
    days = (today, today + timedelta(days=1))
    ops += [partial(sync, cast, "a", days), partial(sync, cast, "b", days)]
    with_app = [p for p in cast.patients if p.app]
    for patient in rng.sample(with_app, min(6, len(with_app))):
        ops.append(partial(read_own, patient))

    async def cancel_some() -> None:
        if future := _future(cast, today):
            await cancel(cast, rng.choice(future))

    async def reschedule_some() -> None:
        if future := _future(cast, today):
            await reschedule(cast, rng.choice(future), today)

    ops += [cancel_some] * 3 + [reschedule_some] * 2
    rng.shuffle(ops)
    return ops


async def run_ops(cast: Cast, ops: list[Op], low: float = 20, high: float = 120) -> None:
    for op in ops:
        cast.net.tick(low, high)
        await op()
