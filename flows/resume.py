"""The ``retail-sales-resume`` flow: load an already validated, staged batch without
extracting (after a load failure, e.g. a MERGE that timed out on a lock). The logic, and what
is refused, is in :mod:`retail_etl.resume`; this flow wires the load's tasks."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from retail_etl.locks import LockTimeoutError, holding
from retail_etl.records import LedgerEntry
from retail_etl.run import RunContext
from retail_etl.settings import get_settings
from tasks.warehouse import (
    ensure_schema_task,
    merge_regions_task,
    open_targets_task,
    plan_resume_task,
    record_ledger_task,
    verify_task,
)


@flow(name="retail-sales-resume", flow_run_name="resume {batch_id}", validate_parameters=True)
def retail_sales_resume(batch_id: str) -> State:
    """Load the staged batch ``batch_id`` (every region of it not loaded yet): check its files
    against the manifest written when it was staged, refuse a region a newer batch of that
    day loaded over, load, verify, write the ledger."""
    logger = get_run_logger()
    settings = get_settings(fresh=True)
    targets = open_targets_task(settings)
    store, warehouse = targets.store, targets.warehouse
    ensure_schema_task(warehouse, settings.stale_stage_table_hours)
    run_id = flow_run.get_id()
    plan = plan_resume_task(store, warehouse, batch_id, run_id)
    for region, why in plan.refused.items():
        logger.error("Not resuming %s: %s", region, why)
    errors: dict[str, str] = {}
    failed_checks: list[str] = []
    if plan.loads:
        try:
            with holding(settings.writer_lock_path, settings.warehouse_lock_timeout_seconds):
                merges, errors = merge_regions_task(
                    warehouse, plan.loads, settings.load_transaction_rows
                )
        except LockTimeoutError as exc:
            merges, errors = (
                {},
                dict.fromkeys(
                    (load.region for load in plan.loads),
                    f"{exc} (RETAIL_ETL_WAREHOUSE_LOCK_TIMEOUT_SECONDS)",
                ),
            )
        if merges:
            ctx = RunContext(
                plan.business_date, tuple(merges), batch_id, run_id or "", settings.runs_dir
            )
            records = {
                load.region: load.record
                for load in plan.loads
                if load.region in merges and load.record is not None
            }
            # (not written to dq_results: that would replace the batch's gate measures)
            checks = verify_task(warehouse, ctx, list(merges.values()), records)
            failed_checks = [f"{c.region}/{c.name}: {c.detail}" for c in checks if not c.passed]
        entries = [
            LedgerEntry(batch_id, region, plan.business_date, "load_failed", error=error)
            for region, error in errors.items()
        ]
        if entries:
            record_ledger_task(warehouse, entries)
    message = plan.describe()
    if errors:
        message += "; failed: " + "; ".join(f"{r}: {e}" for r, e in sorted(errors.items()))
    if failed_checks:
        message += "; verification failed: " + "; ".join(failed_checks)
    logger.info("%s", message)
    if errors or plan.refused or failed_checks:
        return Failed(message=message)
    return Completed(message=message)
