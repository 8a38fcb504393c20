"""Pure time arithmetic: local opening hours to UTC instants, free slots."""

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from domain.errors import InvalidValue
from domain.values import Absence, Interval, OpeningHours


def require_aware(value: datetime, field: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue("a timestamp must carry a UTC offset", field=field)
    if not 1900 <= value.year <= 2999:
        raise InvalidValue("years 1900 to 2999 only", field=field)
    return value.astimezone(UTC)


def local_day(instant: datetime, tz: str) -> date:
    return instant.astimezone(ZoneInfo(tz)).date()


def opening_intervals(hours: Iterable[OpeningHours], day: date, tz: str) -> list[Interval]:
    """The day's opening intervals as UTC instants, DST-correct.

    zoneinfo resolves a wall-clock time that does not exist (spring forward)
    or exists twice (fall back) with `fold=0`, i.e. the first offset.
    """
    zone = ZoneInfo(tz)
    result = []
    for h in hours:
        if h.weekday != day.weekday():
            continue
        start = datetime.combine(day, h.start, tzinfo=zone).astimezone(UTC)
        end = datetime.combine(day, h.end, tzinfo=zone).astimezone(UTC)
        if end > start:
            result.append(Interval(start, end))
    return sorted(result, key=lambda i: i.start)


def candidate_slots(
    opening: Iterable[Interval], duration: timedelta, step: timedelta
) -> Iterator[Interval]:
    for window in opening:
        start = window.start
        while start + duration <= window.end:
            yield Interval(start, start + duration)
            start += step


def free_slots(
    opening: Iterable[Interval],
    duration: timedelta,
    taken: Iterable[Interval],
    absences: Iterable[Absence],
    earliest: datetime,
    latest: datetime,
) -> list[Interval]:
    """Slots of `duration` inside opening hours, clear of bookings and absences."""
    blocked = [*taken, *(Interval(a.start, a.end) for a in absences)]
    return [
        slot
        for slot in candidate_slots(opening, duration, duration)
        if earliest <= slot.start <= latest and not any(slot.overlaps(b) for b in blocked)
    ]
