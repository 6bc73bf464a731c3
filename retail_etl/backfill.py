"""Backfill planning (plain): which (date, regions) to run, in date order."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

#: Latest ledger statuses whose (region, date) a lookback / ``--changed-only`` run redoes
#: whatever the source says: never loaded yet, or its last attempt failed.
REDO_STATUSES: frozenset[str] = frozenset(
    {
        "deferred",
        "extract_failed",
        "transform_failed",
        "gate_failed",
        "load_failed",
        "verify_failed",
    }
)


@dataclass(frozen=True)
class LedgerState:
    """The latest ledger row of a (region, date): its status and the source fingerprint it
    recorded (None for rows without one)."""

    status: str
    source_fingerprint: str | None = None


Pair = tuple[str, date]


def drifted_pairs(
    ledger: Mapping[Pair, LedgerState], source: Mapping[Pair, str]
) -> dict[Pair, str]:
    """(region, date) -> why it must be reprocessed, among the pairs the ledger knows:

    - latest status deferred or failed (:data:`REDO_STATUSES`);
    - latest status 'loaded' and the source's fingerprint now differs from the one recorded
      with that load (or the load recorded none). A pair whose source fingerprint could not be
      read (absent from ``source``) is not judged on it.

    Pairs without any ledger row are not drift: ``--missing-only`` is for those.
    """
    out: dict[Pair, str] = {}
    for pair, state in ledger.items():
        if state.status in REDO_STATUSES:
            out[pair] = f"latest ledger status {state.status}"
        elif state.status == "loaded" and pair in source:
            if state.source_fingerprint is None:
                out[pair] = "loaded without a source fingerprint"
            elif state.source_fingerprint != source[pair]:
                out[pair] = "source changed since its load"
    return out


@dataclass(frozen=True)
class BackfillDay:
    run_date: date
    regions: tuple[str, ...]  # to run
    skipped: tuple[str, ...] = ()  # already loaded (missing-only) or unchanged (changed-only)


@dataclass
class BackfillResult:
    run_date: date
    regions: tuple[str, ...]
    skipped: tuple[str, ...]
    statuses: dict[str, str] = field(default_factory=dict)  # region -> status after the run
    #: region -> latest ledger status of a skipped pair, when not 'loaded' ("never run": none)
    skipped_status: dict[str, str] = field(default_factory=dict)
    message: str = ""
    #: the day's :class:`~retail_etl.run.RunSummary` (None if the day's run had none)
    summary: Any = None

    @property
    def failed(self) -> bool:
        return any(status != "loaded" for status in self.statuses.values())


class BackfillFailed(Exception):
    """The data of a Failed backfill run: its message, with every date's result attached."""

    def __init__(self, message: str, results: list[BackfillResult]) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self) -> tuple[object, ...]:
        return (BackfillFailed, (str(self), self.results))


class BackfillDayFailed(Exception):
    """The data of a Failed ``backfill-day`` task: the day's message, its result attached."""

    def __init__(self, message: str, result: BackfillResult) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[object, ...]:
        return (BackfillDayFailed, (str(self), self.result))


def day_result(outcome: object) -> BackfillResult:
    """The :class:`BackfillResult` of a finished ``backfill-day`` task (Completed or Failed)."""
    if isinstance(outcome, BackfillResult):
        return outcome
    if isinstance(outcome, BackfillDayFailed):
        return outcome.result
    raise TypeError(f"a backfill day ended without its result: {outcome!r}")


def range_label(start: date, end: date) -> str:
    """``2024-01-01..01-31`` (the end shortened when it shares the start's year)."""
    if start == end:
        return start.isoformat()
    tail = f"{end:%m-%d}" if end.year == start.year else end.isoformat()
    return f"{start.isoformat()}..{tail}"


def date_spans(days: Sequence[date], limit: int = 6) -> str:
    """Consecutive dates as ranges: ``2024-01-02..01-05, 2024-01-09`` (at most ``limit``
    ranges, then how many more)."""
    ordered = sorted(set(days))
    spans: list[tuple[date, date]] = []
    for day in ordered:
        if spans and day == spans[-1][1] + timedelta(days=1):
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    shown = ", ".join(range_label(a, b) for a, b in spans[:limit])
    return shown + (f" and {len(spans) - limit} more range(s)" if len(spans) > limit else "")


def pair_problem(result: BackfillResult, region: str) -> str | None:
    """Why a (date, region) pair of a backfill is not loaded, in words shared by many pairs
    (the alert groups by it); None if it is loaded."""
    status = result.statuses.get(region, "unknown")
    if status == "loaded":
        return None
    outcome = result.summary.regions.get(region) if result.summary is not None else None
    if outcome is not None and status == "gate_failed" and outcome.rows_extracted == 0:
        return "the source holds 0 rows"
    if status == "gate_failed":
        return "quality gate failed"
    labels = {
        "extract_failed": "extraction failed",
        "transform_failed": "transform failed",
        "load_failed": "load failed",
        "verify_failed": "verification failed",
        "deferred": "deferred (the region's day had not closed)",
    }
    return labels.get(status, f"run ended {status}")


def group_problems(results: Sequence[BackfillResult]) -> dict[str, dict[str, list[date]]]:
    """problem -> region -> dates, for every pair that is not loaded."""
    groups: dict[str, dict[str, list[date]]] = {}
    for result in results:
        for region in result.regions:
            problem = pair_problem(result, region)
            if problem is not None:
                groups.setdefault(problem, {}).setdefault(region, []).append(result.run_date)
    return groups


def backfill_outcome(start: date, end: date, results: Sequence[BackfillResult]) -> tuple[bool, str]:
    """(every pair loaded, the one-line state message of the backfill run)."""
    ran = sum(len(r.regions) for r in results)
    skipped = sum(len(r.skipped) for r in results)
    failed_days = [r.run_date for r in results if r.failed]
    failed = sum(1 for r in results for s in r.statuses.values() if s != "loaded")
    label = f"backfill {range_label(start, end)}"
    skip = f", {skipped:,} already loaded (skipped)" if skipped else ""
    if not failed:
        return True, f"{label}: {ran:,} (region, date) pair(s) loaded{skip}"
    problems = "; ".join(
        f"{problem}: {sum(len(days) for days in by_region.values()):,}"
        for problem, by_region in group_problems(results).items()
    )
    return False, (
        f"{label}: {failed:,} of {ran:,} (region, date) pair(s) not loaded on "
        f"{len(failed_days):,} day(s) ({date_spans(failed_days)}); {problems}; "
        f"{ran - failed:,} loaded{skip}"
    )


def date_range(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"backfill end {end} is before start {start}")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def source_fingerprints(stats: Mapping[str, Mapping[date, Any]]) -> dict[Pair, str]:
    """(region, date) -> fingerprint, from per-region source stats
    (:func:`retail_etl.fingerprint.read_source_stats`)."""
    return {(r, d): s.fingerprint for r, days in stats.items() for d, s in days.items()}


def plan_changed(
    start: date,
    end: date,
    regions: Sequence[str],
    ledger: Mapping[Pair, LedgerState],
    stats: Mapping[str, Mapping[date, Any]],
    *,
    missing_only: bool = False,
    loaded: Collection[Pair] = (),
) -> tuple[list[BackfillDay], dict[Pair, str]]:
    """The ``--changed-only`` plan (also the daily run's lookback): (plan, why each pair runs)."""
    drifted = drifted_pairs(ledger, source_fingerprints(stats))
    plan = plan_backfill(
        start,
        end,
        regions,
        missing_only=missing_only,
        loaded=loaded,
        changed_only=True,
        drifted=drifted,
    )
    wanted = {(r, d.run_date) for d in plan for r in d.regions}
    return plan, {pair: reason for pair, reason in drifted.items() if pair in wanted}


def plan_backfill(
    start: date,
    end: date,
    regions: Sequence[str],
    *,
    missing_only: bool,
    loaded: Collection[Pair] = (),
    changed_only: bool = False,
    drifted: Collection[Pair] = (),
) -> list[BackfillDay]:
    """One entry per date, oldest first. With ``missing_only``, regions whose latest ledger
    row for that date is 'loaded' are skipped; with ``changed_only``, regions not in
    ``drifted`` (:func:`drifted_pairs`); with both, a pair runs if either says so. A date with
    nothing left still appears, with every region skipped, so the summary shows it."""

    def wanted(pair: Pair) -> bool:
        return (missing_only and pair not in loaded) or (changed_only and pair in drifted)

    plan = []
    for day in date_range(start, end):
        if missing_only or changed_only:
            todo = tuple(r for r in regions if wanted((r, day)))
            done = tuple(r for r in regions if not wanted((r, day)))
        else:
            todo, done = tuple(regions), ()
        plan.append(BackfillDay(day, todo, done))
    return plan


def note_skipped_states(
    results: Sequence[BackfillResult], ledger: Mapping[Pair, LedgerState]
) -> None:
    """Record on each result the latest ledger status of its skipped pairs ("never run" when
    the ledger has none): a changed-only plan skips pairs in any state."""
    for result in results:
        for region in result.skipped:
            state = ledger.get((region, result.run_date))
            result.skipped_status[region] = state.status if state else "never run"


def summary_rows(results: Sequence[BackfillResult]) -> list[dict[str, object]]:
    """One row per (date, region) for the backfill's table artifact."""
    rows: list[dict[str, object]] = []
    for result in results:
        for region in result.skipped:
            status = result.skipped_status.get(region, "loaded")
            rows.append(
                {
                    "date": result.run_date.isoformat(),
                    "region": region,
                    "action": "skipped (loaded, unchanged)"
                    if status == "loaded"
                    else "skipped (not loaded)",
                    "status": status,
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
