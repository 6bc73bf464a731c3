"""Which business day a run is for, and whether a region's day is over (plain, no Prefect).

A run's default ``run_date`` is the day before its *scheduled* start time (in
``RETAIL_ETL_TIMEZONE``), so a run that starts hours late still loads the day it was scheduled
for. Each region counts its business day in its own timezone
(:meth:`~retail_etl.settings.Settings.region_timezone`); a region is extracted only once its day
has ended there plus ``RETAIL_ETL_CLOSE_GRACE_MINUTES``. Before that it is *deferred*: recorded
as such in the ledger and picked up by a later run's lookback (or ``backfill --missing-only``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from retail_etl.settings import Settings


def now_utc() -> datetime:
    """The wall clock the closing check compares with (one seam for tests)."""
    return datetime.now(UTC)


def business_date_for(scheduled_start: datetime, timezone: str) -> date:
    """The business date a run scheduled at ``scheduled_start`` is for: the day before, in
    ``timezone``. Depends only on the scheduled time, never on when the run actually started."""
    if scheduled_start.tzinfo is None:
        raise ValueError(f"scheduled start time {scheduled_start} has no timezone")
    local = scheduled_start.astimezone(ZoneInfo(timezone))
    return local.date() - timedelta(days=1)


def day_closes_at(business_date: date, zone: ZoneInfo, grace: timedelta) -> datetime:
    """When ``business_date`` is over in ``zone`` plus ``grace`` (aware, UTC)."""
    end = datetime.combine(business_date + timedelta(days=1), time(0), tzinfo=zone)
    return (end + grace).astimezone(UTC)


@dataclass(frozen=True)
class Deferral:
    """A region whose business day is not closed yet."""

    region: str
    business_date: date
    closes_at: datetime  # UTC
    zone: str

    @property
    def reason(self) -> str:
        return (
            f"business day {self.business_date} of region {self.region} ({self.zone}) is not "
            f"closed before {self.closes_at:%Y-%m-%d %H:%M} UTC (end of day + grace): deferred"
        )


def split_closed(
    regions: Sequence[str], business_date: date, settings: Settings, now: datetime
) -> tuple[list[str], list[Deferral]]:
    """(regions whose day is closed at ``now``, deferrals of the others), in input order."""
    grace = timedelta(minutes=settings.close_grace_minutes)
    closed: list[str] = []
    deferred: list[Deferral] = []
    for region in regions:
        zone = settings.region_timezone(region)
        closes_at = day_closes_at(business_date, zone, grace)
        if now >= closes_at:
            closed.append(region)
        else:
            deferred.append(Deferral(region, business_date, closes_at, str(zone)))
    return closed, deferred


def lookback_window(run_date: date, days: int) -> tuple[date, date] | None:
    """The dates a run of ``run_date`` re-checks: the ``days`` days before it (None for 0)."""
    if days < 0:
        raise ValueError(f"lookback days must not be negative, got {days}")
    if days == 0:
        return None
    return run_date - timedelta(days=days), run_date - timedelta(days=1)
