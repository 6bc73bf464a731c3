"""Backfill flow ``retail-sales-backfill``: the daily pipeline over a date range, in date
order, optionally only for the (region, date) pairs the load ledger does not show as loaded."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.targets import open_targets
from flows.etl import retail_sales_etl
from retail_etl.backfill import (
    BackfillDay,
    BackfillFailed,
    BackfillResult,
    plan_backfill,
    summary_rows,
)
from retail_etl.run import summary_from_result
from retail_etl.settings import get_settings


@task(name="loaded-pairs", retries=2, retry_delay_seconds=5)
def loaded_pairs_task(start: date, end: date) -> set[tuple[str, date]]:
    _, warehouse = open_targets(get_settings(fresh=True))
    warehouse.ensure_schema()
    return warehouse.loaded_pairs(start, end)


@task(name="backfill-day", task_run_name="backfill-{day.run_date}")
def run_day_task(day: BackfillDay) -> BackfillResult:
    """One date of the backfill: the daily flow as a subflow for the regions still to do."""
    result = BackfillResult(day.run_date, day.regions, day.skipped)
    if not day.regions:
        result.message = "nothing to do"
        return result
    state = retail_sales_etl(run_date=day.run_date, regions=list(day.regions), return_state=True)
    summary = summary_from_result(state.result(raise_on_failure=False))
    result.message = state.message or state.name or ""
    if summary is None:
        result.statuses = dict.fromkeys(day.regions, "failed")
    else:
        result.statuses = {r: o.status for r, o in summary.regions.items()}
    return result


@flow(
    name="retail-sales-backfill",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=True,
)
def retail_sales_backfill(
    start_date: date,
    end_date: date,
    regions: list[str] | None = None,
    missing_only: bool = False,
    max_concurrent_days: int = 1,
) -> State:
    """Run ``retail-sales-etl`` for every date from ``start_date`` to ``end_date`` (inclusive).

    ``max_concurrent_days`` bounds how many dates run at once (1 for the embedded DuckDB
    warehouse, which takes one writer); dates are started oldest first.
    """
    logger = get_run_logger()
    start, end = start_date, end_date
    settings = get_settings(fresh=True)
    chosen = regions or settings.regions
    loaded = loaded_pairs_task(start, end) if missing_only else set()
    plan = plan_backfill(start, end, chosen, missing_only=missing_only, loaded=loaded)
    logger.info(
        "Backfill %s..%s: %d date(s), %d (region, date) pair(s) to run",
        start,
        end,
        len(plan),
        sum(len(d.regions) for d in plan),
    )
    results: list[BackfillResult] = []
    window = max(1, max_concurrent_days)
    for offset in range(0, len(plan), window):
        futures = [run_day_task.submit(day) for day in plan[offset : offset + window]]
        results.extend(f.result() for f in futures)

    create_table_artifact(
        key=f"backfill-{start.isoformat()}-{end.isoformat()}",
        table=summary_rows(results),
        description=f"Backfill {start}..{end} ({'missing only' if missing_only else 'all'})",
    )
    failed = [
        f"{r.run_date} {region}: {status}"
        for r in results
        for region, status in r.statuses.items()
        if status != "loaded"
    ]
    ran = sum(len(r.regions) for r in results)
    if failed:
        message = f"backfill {start}..{end}: {len(failed)} of {ran} failed: " + "; ".join(failed)
        return Failed(message=message, data=BackfillFailed(message, results))
    return Completed(
        message=f"backfill {start}..{end}: {ran} (region, date) pair(s) loaded", data=results
    )
