"""The parent flow ``retail-sales-etl``: extract every region at once, transform, gate,
then load or alert. It only wires steps; the logic lives in ``retail_etl``."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, date, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from blocks.targets import Targets, describe_warehouse
from flows.alert import alert
from flows.load import load_batch
from flows.transform import transform_batch
from flows.validate import validate_batch
from retail_etl import closing, progress
from retail_etl.alerts import alert_note
from retail_etl.backfill import BackfillDay, BackfillResult, plan_changed
from retail_etl.closing import lookback_window, split_closed
from retail_etl.extract import RegionExtract
from retail_etl.fingerprint import SourceDayStats
from retail_etl.housekeeping import RunDirClaim
from retail_etl.locks import LockTimeoutError, holding
from retail_etl.quality import QualityReport, QualityThresholds
from retail_etl.run import (
    PipelineRunFailed,
    RunContext,
    RunSummary,
    new_run_context,
    summary_from_result,
)
from retail_etl.settings import Settings, get_settings
from retail_etl.transform import RegionTransformResult
from retail_etl.warehouse import Warehouse
from tasks.artifacts import flush_if_outermost, publish_markdown
from tasks.extract import (
    collect_extracts,
    extraction_seconds,
    fingerprinted_in_extract,
    publish_extract_artifact,
    submit_extracts,
)
from tasks.runners import ConfiguredTaskRunner, start_task_runner
from tasks.schema import record_schemas_task
from tasks.sources import read_fingerprints
from tasks.warehouse import (
    ensure_schema_task,
    ledger_states_task,
    open_targets_task,
    record_ledger_task,
    record_quality_task,
    sweep_leftovers_task,
)


def etl_run_name() -> str:
    """``retail-sales-etl 2024-01-15``: the business date (the default resolved as the run
    itself resolves it, from the scheduled start time)."""
    day = flow_run.parameters.get("run_date")
    if not day:
        try:
            day = closing.business_date_for(
                flow_run.scheduled_start_time or closing.now_utc(),
                get_settings(fresh=True).timezone,
            )
        except ValueError:  # invalid settings: the run itself reports them
            day = "(default date)"
    return f"retail-sales-etl {day}"


@flow(
    name="retail-sales-etl",
    flow_run_name=etl_run_name,
    # threads or Dask (RETAIL_ETL_TASK_RUNNER); threads: RETAIL_ETL_MAX_CONCURRENT_EXTRACTS
    # extraction tasks at once
    task_runner=ConfiguredTaskRunner(),
    validate_parameters=True,
)
def retail_sales_etl(
    run_date: date | None = None,
    regions: list[str] | None = None,
    lookback_days: int | None = None,
    send_alerts: bool = True,
) -> State:
    """Consolidate one business day of sales from every region into the warehouse.

    ``run_date`` defaults to the day before the run's scheduled start time; regions whose day
    is not closed yet are deferred. Then the ``lookback_days`` days before (default
    ``RETAIL_ETL_LOOKBACK_DAYS``) are re-checked and their drifted pairs reprocessed.
    ``send_alerts=False`` (the backfill) leaves alerting to the caller, which sends one
    summary for every day.
    """
    logger = get_run_logger()
    settings = get_settings(fresh=True)
    ctx = new_run_context(
        settings, run_date, regions, flow_run.get_id(), flow_run.scheduled_start_time
    )
    summary = RunSummary.start(ctx, artifact_prefix=settings.env_prefix)
    summary.warehouse = describe_warehouse(settings)
    logger.info("Batch %s: %s for regions %s", ctx.batch_id, ctx.run_date, ", ".join(ctx.regions))
    # This run's scratch folder is ours until the run ends; killed runs' leftovers are swept.
    run_dir = RunDirClaim(ctx.run_dir)
    # The staging store and the warehouse, once per run (their blocks loaded once).
    opened = open_targets_task(settings, return_state=True)
    if not opened.is_completed():
        summary.fail_regions(
            ctx.regions, "load_failed", f"the warehouse could not be opened: {opened.message}"
        )
        return _finish(summary, None, None, settings, run_dir, send_alerts=send_alerts)
    targets = opened.result()
    store, warehouse = targets.store, targets.warehouse
    sweep_leftovers_task(
        store, settings.runs_dir, settings.staging_retention_days, return_state=True
    )
    # Tables and new contract columns, once per run (every later step assumes them).
    prepared = ensure_schema_task(warehouse, settings.stale_stage_table_hours, return_state=True)
    if not prepared.is_completed():
        error = f"the warehouse could not be prepared: {prepared.message}"
        summary.fail_regions(ctx.regions, "load_failed", error)
        return _finish(summary, None, warehouse, settings, run_dir, send_alerts=send_alerts)
    # Threads or Dask, resolved here in the flow process before any extraction. A runner
    # that cannot run tasks (Dask: no Prefect API the workers reach, no scheduler, no
    # workers, a local cluster that cannot start) fails every region with its cause.
    started = time.perf_counter()
    runner_error = start_task_runner()
    summary.stage_seconds["task_runner"] = time.perf_counter() - started
    if runner_error is not None:
        summary.fail_regions(ctx.regions, "extract_failed", runner_error)
        return _finish(summary, None, warehouse, settings, run_dir, send_alerts=send_alerts)

    # The right day, closed: a region whose business day has not ended (+ grace) waits.
    closed, deferrals = split_closed(ctx.regions, ctx.run_date, settings, closing.now_utc())
    summary.record_deferred(deferrals)
    for deferral in deferrals:
        logger.warning("%s", deferral.reason)
    # Source fingerprints of the lookback + the day, one query per region: a region extracted
    # in one task reads them in its extraction's snapshot; the others (deferred, or extracted
    # in splits) here, before any extraction starts.
    days = settings.lookback_days if lookback_days is None else lookback_days
    window = lookback_window(ctx.run_date, days)
    stats_start = window[0] if window else ctx.run_date
    ahead = [r for r in ctx.regions if r not in closed or not fingerprinted_in_extract(r, settings)]
    stats: dict[str, dict[date, SourceDayStats]] = {}
    fingerprint_errors: dict[str, str] = {}
    if ahead:
        started = time.perf_counter()
        stats, fingerprint_errors = read_fingerprints(ahead, stats_start, ctx.run_date, settings)
        summary.stage_seconds["fingerprint"] = time.perf_counter() - started
    summary.record_fingerprints(
        {r: stats[r][ctx.run_date].fingerprint for r in closed if r in stats}, fingerprint_errors
    )
    ctx = replace(ctx, regions=tuple(closed))
    if ctx.regions:
        report, extracted_stats = _run_closed_regions(ctx, settings, summary, targets, stats_start)
        stats.update(extracted_stats)
    else:
        report = None

    # Lookback: earlier pairs whose source changed since their load, or deferred / failed.
    if window:
        ledger = ledger_states_task(warehouse, window[0], window[1], return_state=True)
        if ledger.is_completed():
            plan, reasons = plan_changed(
                window[0], window[1], list(summary.regions), ledger.result(), stats
            )
            results = [run_planned_day(day) for day in plan if day.regions]
            summary.record_lookback(results, {f"{d} {r}": why for (r, d), why in reasons.items()})
        else:
            summary.ledger_errors.append(f"reading the ledger for the lookback: {ledger.message}")
    return _finish(summary, report, warehouse, settings, run_dir, send_alerts=send_alerts)


def _run_closed_regions(
    ctx: RunContext,
    settings: Settings,
    summary: RunSummary,
    targets: Targets,
    stats_start: date,
) -> tuple[QualityReport | None, dict[str, dict[date, SourceDayStats]]]:
    """Extract, transform, gate and load the run's (closed) regions, recording each step in
    ``summary``; (the quality report if the gate ran, the source stats of
    [``stats_start``, run date] the extracted regions read in their snapshots)."""
    # Extract: every region concurrently (RETAIL_ETL_EXTRACT_SPLITS: several tasks per
    # region, combined before the transform); a failed region is reported, the rest go on.
    # The transform subflow runs meanwhile and takes each region as soon as it lands.
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    extracting = submit_extracts(ctx, settings, stats_start)
    transform = transform_batch(quote(extracting), ctx, settings, return_state=True)
    extracts, extract_failures = collect_extracts(extracting)
    if transform.is_completed():
        transformed, transform_errors = transform.result()
    else:  # the subflow itself broke: every extracted region is untransformed
        transformed = {}
        transform_errors = dict.fromkeys(
            extracts, f"the transform subflow failed: {transform.message}"
        )
    extract_seconds = extraction_seconds(extracting, started_at)
    summary.stage_seconds["extract"] = extract_seconds
    # (the time after the last extract landed; earlier regions overlapped the extraction)
    summary.stage_seconds["transform"] = max(0.0, time.perf_counter() - started - extract_seconds)
    summary.record_extracts(extracts, {r: f.message for r, f in extract_failures.items()})
    stats = {r: e.day_stats for r, e in extracts.items() if e.day_stats is not None}
    summary.record_fingerprints({r: s[ctx.run_date].fingerprint for r, s in stats.items()}, {})
    publish_extract_artifact(ctx, summary, extracts)
    report = _gate_and_load(
        ctx, settings, summary, targets, extracts, transformed, transform_errors
    )
    return report, stats


def _gate_and_load(
    ctx: RunContext,
    settings: Settings,
    summary: RunSummary,
    targets: Targets,
    extracts: dict[str, RegionExtract],
    transformed: dict[str, RegionTransformResult],
    transform_errors: dict[str, str],
) -> QualityReport | None:
    """The extracted regions' source schemas recorded, the transforms' outcomes, then gate
    and load; the quality report if the gate ran."""
    logger = get_run_logger()
    warehouse = targets.warehouse
    if not extracts:
        return None
    # Schema history: a new fingerprint that differs from the contract is warned about once.
    schemas = record_schemas_task(warehouse, extracts, ctx, return_state=True)
    if schemas.is_completed():
        summary.schema_warnings = schemas.result()
    else:
        summary.ledger_errors.append(f"recording source schemas failed: {schemas.message}")
    summary.record_transforms(transformed, transform_errors)
    if not transformed:
        return None

    started = time.perf_counter()
    thresholds = QualityThresholds.from_settings(settings)
    gate = validate_batch(transformed, ctx, thresholds, targets, return_state=True)
    summary.stage_seconds["validate"] = time.perf_counter() - started
    if not gate.is_completed():
        summary.fail_regions(
            list(transformed), "gate_failed", f"the quality gate could not run: {gate.message}"
        )
        return None
    report = gate.result()
    summary.record_gate(report)
    if report.verdict != "pass":
        # A failed gate's measures are what an auditor needs most: kept like any batch's.
        recorded = record_quality_task(
            warehouse, report.to_records(ctx.flow_run_id), return_state=True
        )
        if not recorded.is_completed():
            summary.ledger_errors.append(recorded.message or "recording dq_results failed")
        return report

    started = time.perf_counter()
    load = None
    try:
        with holding(
            settings.writer_lock_path,
            settings.warehouse_lock_timeout_seconds,
            on_wait=lambda holder: logger.warning(
                "Another run (%s) is writing to the warehouse: waiting for our turn", holder
            ),
        ):
            load = load_batch(
                transformed,
                {r: summary.regions[r] for r in transformed},
                report,
                ctx,
                targets,
                return_state=True,
            )
        load_error = load.message if not load.is_completed() else None
    except LockTimeoutError as exc:
        load_error = f"{exc} (RETAIL_ETL_WAREHOUSE_LOCK_TIMEOUT_SECONDS)"
    summary.stage_seconds["load"] = time.perf_counter() - started
    if load is not None and load_error is None:
        loaded = load.result()
        summary.stage_seconds.update(loaded.stage_seconds)  # stage, merge, verify
        summary.record_load(loaded.merges, loaded.errors, loaded.failed_checks)
        summary.ledger_errors.extend(loaded.ledger_errors)
    else:  # the subflow itself broke: nothing it did can be trusted as loaded
        summary.fail_regions(list(transformed), "load_failed", f"the load failed: {load_error}")
    return report


def _finish(
    summary: RunSummary,
    report: QualityReport | None,
    warehouse: Warehouse | None,
    settings: Settings,
    run_dir: RunDirClaim,
    *,
    send_alerts: bool = True,
) -> State:
    """The ledger rows of regions not loaded, the alert, the summary artifact, the run's
    folder, the final state (its message says whether the problem was alerted)."""
    logger = get_run_logger()
    # Every region whose run ended gets a ledger row, so backfills find it (a loaded one's
    # was written with its MERGE).
    entries = summary.ledger_entries()
    if entries and warehouse is None:
        summary.ledger_errors.append("the warehouse could not be opened")
    elif entries and warehouse is not None:
        ledger_state = record_ledger_task(warehouse, entries, return_state=True)
        if not ledger_state.is_completed():
            summary.ledger_errors.append(ledger_state.message or "recording the ledger failed")
    alerted = summary.needs_alert and send_alerts
    sent = False
    if alerted:
        alert_state = alert(summary, report, return_state=True)
        sent = bool(alert_state.is_completed() and alert_state.result())

    ok, message = summary.outcome()
    if not ok:
        message += alert_note(sent=sent, by_backfill=not send_alerts)
    progress.finished(summary)
    publish_markdown(
        settings.artifact_key(f"summary-{summary.run_date.isoformat()}"),
        summary.to_markdown(alerted=alerted, state_message=message),
        description=summary.headline(),
    )
    logger.info("%s", summary.render_text())
    # Everything a rerun or a resume needs is staged, not in here.
    run_dir.release(remove=not settings.keep_run_dir)
    flush_if_outermost()  # the run's artifacts, created meanwhile
    if ok:
        return Completed(message=message, data=summary)
    return Failed(message=message, data=PipelineRunFailed(message, summary))


def run_planned_day(day: BackfillDay, *, send_alerts: bool = True) -> BackfillResult:
    """One date of a plan (backfill or lookback): this flow as a subflow for the regions still
    to do, without a lookback of its own (``send_alerts=False``: the caller alerts once)."""
    result = BackfillResult(day.run_date, day.regions, day.skipped)
    if not day.regions:
        result.message = "nothing to do"
        return result
    state = retail_sales_etl(
        run_date=day.run_date,
        regions=list(day.regions),
        lookback_days=0,
        send_alerts=send_alerts,
        return_state=True,
    )
    summary = summary_from_result(state.result(raise_on_failure=False))
    result.message = state.message or state.name or ""
    result.summary = summary
    if summary is None:
        result.statuses = dict.fromkeys(day.regions, "failed")
    else:
        result.statuses = {r: o.status for r, o in summary.regions.items()}
    return result
