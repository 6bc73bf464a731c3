"""Audit flow ``retail-sales-audit``: source vs warehouse per region and business date."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from retail_etl.audit import AuditReport, audit_rows
from retail_etl.backfill import date_range
from retail_etl.redact import scrub_secrets
from retail_etl.settings import get_settings
from retail_etl.warehouse import Warehouse
from tasks.artifacts import flush_if_outermost, publish_table
from tasks.sources import read_fingerprints
from tasks.warehouse import ensure_schema_task, ledger_states_task, open_targets_task


@task(name="fact-day-stats", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def fact_stats_task(
    warehouse: Warehouse, start: date, end: date
) -> dict[tuple[str, date], tuple[int, Decimal | None]]:
    return warehouse.fact_day_stats(start, end)


@flow(
    name="retail-sales-audit",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=True,
)
def retail_sales_audit(start_date: date, end_date: date, regions: list[str] | None = None) -> State:
    """Per region and day: source rows (all, live) and amounts, fact rows and amounts, the
    latest ledger status and whether the source still matches the fingerprint of its load.
    Publishes the ``audit-<start>-<end>`` table artifact; the state's data is the rows."""
    logger = get_run_logger()
    date_range(start_date, end_date)  # refuses an inverted range
    settings = get_settings(fresh=True)
    chosen = regions or settings.regions
    warehouse = open_targets_task(settings).warehouse
    ensure_schema_task(warehouse, settings.stale_stage_table_hours)
    stats, errors = read_fingerprints(chosen, start_date, end_date, settings, live=True)
    errors = {r: scrub_secrets(e) for r, e in errors.items()}
    fact = fact_stats_task(warehouse, start_date, end_date)
    ledger = ledger_states_task(warehouse, start_date, end_date)
    report = AuditReport(audit_rows(start_date, end_date, chosen, stats, fact, ledger), errors)
    text = report.render()
    logger.info("%s", text)
    publish_table(
        settings.artifact_key(f"audit-{start_date.isoformat()}-{end_date.isoformat()}"),
        [r.as_record() for r in report.rows],
        description=text.splitlines()[-1],
    )
    flush_if_outermost()
    return Completed(
        message=f"audit {start_date}..{end_date}: {len(report.drifted)} (region, date) pair(s) "
        "to reprocess",
        data=report,
    )
