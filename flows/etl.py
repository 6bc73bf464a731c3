"""The parent flow ``retail-sales-etl``: extract every region at once, then transform,
gate, and load or alert. It only wires steps; the logic lives in ``retail_etl``."""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from retail_etl.run import RunSummary, new_run_context
from retail_etl.settings import get_settings
from tasks.extract import configured_extract_task
from tasks.results import collect


@flow(
    name="retail-sales-etl",
    task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
    validate_parameters=True,
)
def retail_sales_etl(run_date: date | None = None, regions: list[str] | None = None) -> State:
    """Consolidate one business day of sales from every region into the warehouse."""
    logger = get_run_logger()
    settings = get_settings(fresh=True)
    ctx = new_run_context(settings, run_date, regions, flow_run.get_id())
    summary = RunSummary.start(ctx)
    logger.info("Batch %s: %s for regions %s", ctx.batch_id, ctx.run_date, ", ".join(ctx.regions))

    extract_started = time.perf_counter()
    extract = configured_extract_task(settings)
    futures = extract.map(
        list(ctx.regions),
        business_date=unmapped(ctx.run_date),
        extract_dir=unmapped(ctx.extract_dir),
        settings=unmapped(settings),
    )
    extracts, failures = collect(list(ctx.regions), futures)
    summary.stage_seconds["extract"] = time.perf_counter() - extract_started
    for region, result in extracts.items():
        outcome = summary.regions[region]
        outcome.status = "extracted"
        outcome.rows_extracted = result.rows
        outcome.extract_seconds = result.seconds
    for region, failure in failures.items():
        outcome = summary.regions[region]
        outcome.status = "extract_failed"
        outcome.error = f"{failure.error} (after {failure.attempts} attempt(s))"
    create_table_artifact(
        key=f"extract-{ctx.run_date.isoformat()}",
        table=[
            {
                "region": region,
                "status": summary.regions[region].status,
                "rows": result.rows if result else 0,
                "bytes": result.bytes if result else 0,
                "seconds": round(result.seconds, 3) if result else None,
                "source_columns": ", ".join(result.source_columns) if result else "",
                "schema_changes": result.schema_changes if result else "",
                "error": summary.regions[region].error or "",
            }
            for region in ctx.regions
            for result in [extracts.get(region)]
        ],
        description=f"Extraction of {ctx.run_date} (batch {ctx.batch_id})",
    )

    ok, message = summary.outcome()
    logger.info("%s", summary.render_text())
    if ok:
        return Completed(message=message, data=summary)
    return Failed(message=message, data=summary)
