from datetime import UTC, date, datetime, time, timedelta

import pytest

from domain.calendar import free_slots, local_day, opening_intervals, require_aware
from domain.errors import InvalidValue
from domain.values import Absence, Interval, OpeningHours

PARIS = "Europe/Paris"
MORNING = (OpeningHours(weekday, time(9), time(12)) for weekday in range(7))


def test_opening_hours_follow_paris_wall_clock_across_dst():
    hours = list(MORNING)
    winter = opening_intervals(hours, date(2026, 12, 1), PARIS)
    summer = opening_intervals(hours, date(2026, 7, 1), PARIS)
    assert winter == [
        Interval(datetime(2026, 12, 1, 8, tzinfo=UTC), datetime(2026, 12, 1, 11, tzinfo=UTC))
    ]
    assert summer == [
        Interval(datetime(2026, 7, 1, 7, tzinfo=UTC), datetime(2026, 7, 1, 10, tzinfo=UTC))
    ]


def test_the_night_of_the_spring_change_is_an_hour_shorter():
    night = [OpeningHours(5, time(0), time(23, 59))]  # Saturday into the change
    sunday = [OpeningHours(6, time(0), time(23, 59))]
    assert opening_intervals(night, date(2026, 3, 28), PARIS)[0].end - opening_intervals(
        night, date(2026, 3, 28), PARIS
    )[0].start == timedelta(hours=23, minutes=59)
    change = opening_intervals(sunday, date(2026, 3, 29), PARIS)[0]
    assert change.end - change.start == timedelta(hours=22, minutes=59)


def test_hours_of_other_weekdays_do_not_open_the_day():
    assert opening_intervals([OpeningHours(0, time(9), time(12))], date(2026, 12, 1), PARIS) == []


def test_local_day_is_the_paris_date_not_the_utc_date():
    assert local_day(datetime(2026, 12, 1, 23, 30, tzinfo=UTC), PARIS) == date(2026, 12, 2)


def test_naive_timestamps_are_refused_naming_the_field():
    with pytest.raises(InvalidValue) as e:
        require_aware(datetime(2026, 12, 1, 9), "start")
    assert e.value.field == "start"


def test_free_slots_skip_bookings_absences_and_the_notice_period():
    day = opening_intervals([OpeningHours(1, time(9), time(10))], date(2026, 12, 1), PARIS)
    eight = datetime(2026, 12, 1, 8, tzinfo=UTC)
    taken = [Interval(eight + timedelta(minutes=20), eight + timedelta(minutes=40))]
    absent = [Absence(eight + timedelta(minutes=40), eight + timedelta(minutes=50))]
    slots = free_slots(day, timedelta(minutes=20), taken, absent, eight, eight + timedelta(days=1))
    assert [s.start for s in slots] == [eight]
    later = free_slots(
        day, timedelta(minutes=20), [], [], eight + timedelta(minutes=1), eight + timedelta(days=1)
    )
    assert [s.start - eight for s in later] == [timedelta(minutes=20), timedelta(minutes=40)]
