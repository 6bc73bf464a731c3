"""Backfill planning (plain): which (date, regions) to run, in date order."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta


@dataclass(frozen=True)
class BackfillDay:
    run_date: date
    regions: tuple[str, ...]  # to run
    skipped: tuple[str, ...] = ()  # already loaded (missing-only)


@dataclass
class BackfillResult:
    run_date: date
    regions: tuple[str, ...]
    skipped: tuple[str, ...]
    statuses: dict[str, str] = field(default_factory=dict)  # region -> status after the run
    message: str = ""


class BackfillFailed(Exception):
    """The data of a Failed backfill run: its message, with every date's result attached."""

    def __init__(self, message: str, results: list[BackfillResult]) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self) -> tuple[object, ...]:
        return (BackfillFailed, (str(self), self.results))


def date_range(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"backfill end {end} is before start {start}")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def plan_backfill(
    start: date,
    end: date,
    regions: Sequence[str],
    *,
    missing_only: bool,
    loaded: Collection[tuple[str, date]] = (),
) -> list[BackfillDay]:
    """One entry per date, oldest first. With ``missing_only``, regions whose latest ledger
    row for that date is 'loaded' are skipped; a date with nothing left still appears, with
    every region skipped, so the summary shows it."""
    plan = []
    for day in date_range(start, end):
        if missing_only:
            todo = tuple(r for r in regions if (r, day) not in loaded)
            done = tuple(r for r in regions if (r, day) in loaded)
        else:
            todo, done = tuple(regions), ()
        plan.append(BackfillDay(day, todo, done))
    return plan


def summary_rows(results: Sequence[BackfillResult]) -> list[dict[str, object]]:
    """One row per (date, region) for the backfill's table artifact."""
    rows: list[dict[str, object]] = []
    for result in results:
        for region in result.skipped:
            rows.append(
                {
                    "date": result.run_date.isoformat(),
                    "region": region,
                    "action": "skipped (already loaded)",
                    "status": "loaded",
                }
            )
        for region in result.regions:
            rows.append(
                {
                    "date": result.run_date.isoformat(),
                    "region": region,
                    "action": "ran",
                    "status": result.statuses.get(region, "unknown"),
                }
            )
    return sorted(rows, key=lambda r: (str(r["date"]), str(r["region"])))
