"""The right day, closed: the scheduled day, region time zones, grace, the lookback window
(pure functions, no Prefect)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from retail_etl.closing import business_date_for, day_closes_at, lookback_window, split_closed
from retail_etl.settings import DEFAULT_REGIONS, Settings

D = date(2024, 1, 15)
NY = ZoneInfo("America/New_York")


def test_a_late_started_run_keeps_the_day_it_was_scheduled_for():
    scheduled = datetime(2024, 1, 16, 2, 0, tzinfo=NY)  # the 02:00 New York run of the 16th
    assert business_date_for(scheduled, "America/New_York") == D
    # In UTC (the default RETAIL_ETL_TIMEZONE) that is 07:00 on the 16th: still the 15th.
    assert business_date_for(scheduled, "UTC") == D
    # The default 11:00 UTC schedule, on the first day of summer time in the US and in Europe.
    assert business_date_for(datetime(2024, 3, 11, 11, 0, tzinfo=UTC), "UTC") == date(2024, 3, 10)
    assert business_date_for(datetime(2024, 3, 31, 11, 0, tzinfo=UTC), "UTC") == date(2024, 3, 30)


def test_a_naive_scheduled_time_is_refused():
    with pytest.raises(ValueError, match="no timezone"):
        business_date_for(datetime(2024, 1, 16, 2, 0), "UTC")


def test_default_region_timezones_and_overrides():
    settings = Settings()
    assert {r: str(settings.region_timezone(r)) for r in DEFAULT_REGIONS} == {
        "us_east": "America/New_York",
        "us_west": "America/Los_Angeles",
        "europe": "Europe/London",
        "apac": "Asia/Singapore",
    }
    assert str(settings.region_timezone("latam")) == "UTC"  # not configured: RETAIL_ETL_TIMEZONE
    custom = Settings(region_timezones='{"europe": "Europe/Berlin", "latam": "America/Bogota"}')
    assert str(custom.region_timezone("europe")) == "Europe/Berlin"
    assert str(custom.region_timezone("latam")) == "America/Bogota"
    assert str(custom.region_timezone("us_west")) == "America/Los_Angeles"
    with pytest.raises(ValueError, match="'Mars/Olympus' of region 'europe'"):
        Settings(region_timezones='{"europe": "Mars/Olympus"}').region_timezone("europe")


def test_a_day_closes_at_local_midnight_plus_grace_across_dst():
    grace = timedelta(minutes=60)
    la = ZoneInfo("America/Los_Angeles")
    assert day_closes_at(D, la, grace) == datetime(2024, 1, 16, 9, 0, tzinfo=UTC)  # PST
    assert day_closes_at(date(2024, 7, 15), la, grace) == datetime(2024, 7, 16, 8, 0, tzinfo=UTC)
    sg = ZoneInfo("Asia/Singapore")
    assert day_closes_at(D, sg, timedelta(0)) == datetime(2024, 1, 15, 16, 0, tzinfo=UTC)


def test_regions_whose_day_is_not_over_are_deferred():
    settings = Settings()  # default grace: 60 minutes
    regions = list(DEFAULT_REGIONS)
    # 02:00 New York on the 16th = 07:00 UTC: New York closed at 05:00 (+1 h), Los Angeles not
    # before 08:00 (+1 h).
    closed, deferred = split_closed(
        regions, D, settings, datetime(2024, 1, 16, 2, 0, tzinfo=NY).astimezone(UTC)
    )
    assert closed == ["us_east", "europe", "apac"]
    assert [(d.region, d.closes_at) for d in deferred] == [
        ("us_west", datetime(2024, 1, 16, 9, 0, tzinfo=UTC))
    ]
    assert "us_west (America/Los_Angeles) is not closed before 2024-01-16 09:00 UTC" in (
        deferred[0].reason
    )
    # The default schedule (11:00 UTC) finds all four closed, in winter and in summer.
    for day in (D, date(2024, 7, 15)):
        now = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(
            hours=11
        )
        assert split_closed(regions, day, settings, now) == (regions, [])
    # The grace is a setting: with 4 hours, 11:00 UTC is too early for Los Angeles in winter.
    _, late = split_closed(
        regions, D, Settings(close_grace_minutes=240), datetime(2024, 1, 16, 11, 0, tzinfo=UTC)
    )
    assert [d.region for d in late] == ["us_west"]


def test_the_lookback_window_is_the_days_before_the_run_date():
    assert lookback_window(D, 3) == (date(2024, 1, 12), date(2024, 1, 14))
    assert lookback_window(D, 1) == (date(2024, 1, 14), date(2024, 1, 14))
    assert lookback_window(D, 0) is None
    with pytest.raises(ValueError, match="negative"):
        lookback_window(D, -1)
