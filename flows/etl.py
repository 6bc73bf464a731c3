"""The parent flow ``retail-sales-etl``: extract every region at once, transform, gate,
then load or alert. It only wires steps; the logic lives in ``retail_etl``."""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from blocks.targets import describe_warehouse
from flows.alert import alert
from flows.load import load_batch
from flows.transform import transform_batch
from flows.validate import validate_batch
from retail_etl.run import PipelineRunFailed, RunSummary, ledger_entries, new_run_context
from retail_etl.settings import get_settings
from tasks.extract import ExtractionThread, publish_extract_artifact
from tasks.runners import ConfiguredTaskRunner
from tasks.schema import record_schemas_task
from tasks.transform import ExtractFeed
from tasks.warehouse import ensure_schema_task, record_ledger_task, record_quality_task


@flow(
    name="retail-sales-etl",
    task_runner=ConfiguredTaskRunner(max_workers=8),  # threads or Dask: RETAIL_ETL_TASK_RUNNER
    validate_parameters=True,
)
def retail_sales_etl(run_date: date | None = None, regions: list[str] | None = None) -> State:
    """Consolidate one business day of sales from every region into the warehouse."""
    logger = get_run_logger()
    settings = get_settings(fresh=True)
    ctx = new_run_context(settings, run_date, regions, flow_run.get_id())
    summary = RunSummary.start(ctx)
    summary.warehouse = describe_warehouse(settings)
    logger.info("Batch %s: %s for regions %s", ctx.batch_id, ctx.run_date, ", ".join(ctx.regions))
    # Tables and new contract columns, once per run (every later step assumes them).
    ensure_schema_task(settings)

    # Extract: every region concurrently (RETAIL_ETL_EXTRACT_SPLITS: several tasks per
    # region, combined before the transform); a failed region is reported, the rest go on.
    # The transform subflow runs meanwhile and takes each region as soon as it lands.
    started = time.perf_counter()
    feed = ExtractFeed()
    extraction = ExtractionThread(ctx, settings, feed)
    extraction.start()
    transformed, transform_errors = transform_batch(feed, ctx, settings)
    extracts, extract_failures = extraction.result()
    summary.stage_seconds["extract"] = extraction.seconds
    # (the time after the last extract landed; earlier regions overlapped the extraction)
    summary.stage_seconds["transform"] = time.perf_counter() - started - extraction.seconds
    summary.record_extracts(extracts, {r: f.message for r, f in extract_failures.items()})
    publish_extract_artifact(ctx, summary, extracts)
    # Schema history: a new fingerprint that differs from the contract is warned about once.
    report = None
    if extracts:
        summary.schema_warnings = record_schemas_task(extracts, ctx, settings)
        summary.record_transforms(transformed, transform_errors)

        started = time.perf_counter()
        report = validate_batch(transformed, ctx, settings) if transformed else None
        summary.stage_seconds["validate"] = time.perf_counter() - started
        if report is not None:
            summary.record_gate(report)

        if report is not None and report.verdict == "pass":
            started = time.perf_counter()
            loaded = load_batch(
                transformed,
                report,
                ctx,
                settings,
                {r: e.seconds for r, e in extracts.items()},
            )
            summary.stage_seconds["load"] = time.perf_counter() - started
            summary.stage_seconds.update(loaded.stage_seconds)  # stage, merge, verify
            summary.record_load(
                loaded.merges, loaded.errors, loaded.failed_checks, loaded.unverified
            )
            summary.ledger_errors.extend(loaded.ledger_errors)
        elif report is not None:
            # A failed gate's measures are what an auditor needs most: kept like any batch's.
            recorded = record_quality_task(report.to_records(), settings, return_state=True)
            if not recorded.is_completed():
                summary.ledger_errors.append(recorded.message or "recording dq_results failed")

    # Regions that never reached a MERGE still get a ledger row, so backfills find them.
    unloaded = ledger_entries(summary)
    if unloaded:
        ledger_state = record_ledger_task(unloaded, settings, return_state=True)
        if not ledger_state.is_completed():
            summary.ledger_errors.append(ledger_state.message or "recording the ledger failed")
    if summary.needs_alert:
        alert(summary, report)

    ok, message = summary.outcome()
    logger.info("%s", summary.render_text())
    if ok:
        return Completed(message=message, data=summary)
    return Failed(message=message, data=PipelineRunFailed(message, summary))
