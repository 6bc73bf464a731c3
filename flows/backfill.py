"""Backfill flow ``retail-sales-backfill``: the daily pipeline over a date range, in date
order, optionally only for the (region, date) pairs the load ledger does not show as loaded.

Each day is a ``backfill-day`` task running ``retail-sales-etl`` as a subflow with its own
alert turned off; a day that did not load every region ends Failed (task and subflow), and
the backfill sends one summary alert for the whole range.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.notifications import send_alert
from flows.alert import flow_run_ui_url
from flows.etl import run_planned_day
from retail_etl.alerts import alert_note, build_backfill_alert
from retail_etl.backfill import (
    BackfillDay,
    BackfillDayFailed,
    BackfillFailed,
    BackfillResult,
    LedgerState,
    backfill_outcome,
    day_result,
    note_skipped_states,
    plan_backfill,
    plan_changed,
    range_label,
    summary_rows,
)
from retail_etl.settings import get_settings
from retail_etl.warehouse import Warehouse
from tasks.artifacts import flush_if_outermost, publish_markdown, publish_table
from tasks.sources import read_fingerprints
from tasks.warehouse import ensure_schema_task, ledger_states_task, open_targets_task


@task(name="loaded-pairs", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def loaded_pairs_task(warehouse: Warehouse, start: date, end: date) -> set[tuple[str, date]]:
    warehouse.ensure_schema()
    return warehouse.loaded_pairs(start, end)


@task(name="backfill-day", task_run_name="backfill-{day.run_date}")
def run_day_task(day: BackfillDay) -> State:
    """One date of the backfill: the daily flow as a subflow for the regions still to do,
    without its own alert. Failed (carrying the day's result) when a region was not loaded."""
    result = run_planned_day(day, send_alerts=False)
    if result.failed:
        return Failed(message=result.message, data=BackfillDayFailed(result.message, result))
    return Completed(message=result.message, data=result)


@task(name="backfill-alert")
def send_backfill_alert_task(
    start: date, end: date, results: list[BackfillResult], flow_run_id: str | None
) -> bool:
    """The backfill's one alert: an artifact and one Slack message (never raises)."""
    message = build_backfill_alert(
        start,
        end,
        results,
        flow_run_url=flow_run_ui_url(flow_run_id) if flow_run_id else None,
        env_prefix=get_settings().env_prefix,
    )
    publish_markdown(
        get_settings().artifact_key(f"alert-backfill-{start.isoformat()}-{end.isoformat()}"),
        message.markdown,
        description=message.title,
    )
    return send_alert(message, get_settings(fresh=True), logger=get_run_logger())


def backfill_run_name() -> str:
    """``backfill 2024-01-01..01-31``."""
    params = flow_run.parameters
    start, end = params["start_date"], params["end_date"]
    if isinstance(start, str):
        start, end = date.fromisoformat(start), date.fromisoformat(end)
    return f"backfill {range_label(start, end)}"


@flow(
    name="retail-sales-backfill",
    flow_run_name=backfill_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=True,
)
def retail_sales_backfill(
    start_date: date,
    end_date: date,
    regions: list[str] | None = None,
    missing_only: bool = False,
    max_concurrent_days: int = 1,
    changed_only: bool = False,
) -> State:
    """Run ``retail-sales-etl`` for every date from ``start_date`` to ``end_date`` (inclusive).

    ``missing_only``: only pairs whose latest ledger row is not 'loaded'. ``changed_only``: only
    pairs whose source fingerprint changed since their load, or left deferred or failed (with
    both: either). ``max_concurrent_days`` bounds how many dates run at once (1 for the
    embedded DuckDB warehouse, which takes one writer); dates are started oldest first.
    """
    logger = get_run_logger()
    start, end = start_date, end_date
    settings = get_settings(fresh=True)
    chosen = regions or settings.regions
    loaded: set[tuple[str, date]] = set()
    ledger: dict[tuple[str, date], LedgerState] = {}
    if missing_only or changed_only:  # the warehouse, once for the plan (each day opens its own)
        warehouse = open_targets_task(settings).warehouse
        loaded = loaded_pairs_task(warehouse, start, end) if missing_only else set()
        if changed_only:
            ensure_schema_task(warehouse, settings.stale_stage_table_hours)
            ledger = ledger_states_task(warehouse, start, end)
    if changed_only:
        stats, errors = read_fingerprints(chosen, start, end, settings)
        for region, error in errors.items():
            logger.warning("Region %s: source fingerprint not read: %s", region, error)
        plan, reasons = plan_changed(
            start, end, chosen, ledger, stats, missing_only=missing_only, loaded=loaded
        )
        for (region, day), why in sorted(reasons.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            logger.info("%s %s: %s", day, region, why)
    else:
        plan = plan_backfill(start, end, chosen, missing_only=missing_only, loaded=loaded)
    logger.info(
        "Backfill %s: %d date(s), %d (region, date) pair(s) to run",
        range_label(start, end),
        len(plan),
        sum(len(d.regions) for d in plan),
    )
    results: list[BackfillResult] = []
    window = max(1, max_concurrent_days)
    for offset in range(0, len(plan), window):
        futures = [run_day_task.submit(day) for day in plan[offset : offset + window]]
        for future in futures:
            future.wait()
            results.append(day_result(future.state.result(raise_on_failure=False)))

    if changed_only:  # pairs skipped as unchanged may be in any state
        note_skipped_states(results, ledger)
    publish_table(
        settings.artifact_key(f"backfill-{start.isoformat()}-{end.isoformat()}"),
        summary_rows(results),
        description=f"Backfill {start}..{end} ({_mode(missing_only, changed_only)})",
    )
    ok, message = backfill_outcome(start, end, results)
    if ok:
        flush_if_outermost()
        return Completed(message=message, data=results)
    sent = send_backfill_alert_task(start, end, results, flow_run.get_id())
    message += alert_note(sent=sent)
    flush_if_outermost()
    return Failed(message=message, data=BackfillFailed(message, results))


def _mode(missing_only: bool, changed_only: bool) -> str:
    modes = [m for m, on in (("missing only", missing_only), ("changed only", changed_only)) if on]
    return " + ".join(modes) or "all"
