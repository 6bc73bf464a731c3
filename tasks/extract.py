"""Extraction task: one region, one business day, retried with exponential backoff."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from blocks.sources import load_source_url
from retail_etl.extract import RegionExtract, extract_region
from retail_etl.run import RunContext, RunSummary
from retail_etl.schema import SchemaContractError
from retail_etl.settings import Settings


def _retry_unless_contract_error(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Retry I/O failures; a schema that breaks the contract will not fix itself in minutes."""
    try:
        state.result()
    except SchemaContractError:
        return False
    except Exception:
        return True
    return False


@task(name="extract-region", task_run_name="extract-{region}-{business_date}")
def extract_region_task(
    region: str, business_date: date, extract_dir: Path, settings: Settings
) -> RegionExtract:
    logger = get_run_logger()
    source_url, origin = load_source_url(region, settings)
    logger.info("Extracting region %s for %s (credentials from %s)", region, business_date, origin)
    try:
        result = extract_region(
            source_url.get_secret_value(),
            region,
            business_date,
            extract_dir,
            chunk_rows=settings.chunk_rows,
            aliases=settings.column_aliases_for(region),
        )
    except Exception as exc:
        # The API records task-run history asynchronously; carry the count on the error.
        exc.attempts = task_run.run_count  # type: ignore[attr-defined]
        raise
    logger.info(
        "Region %s: %s rows, %s bytes in %.2f s (%s)",
        region,
        f"{result.rows:,}",
        f"{result.bytes:,}",
        result.seconds,
        result.schema_changes,
    )
    return result


def configured_extract_task(settings: Settings):  # type: ignore[no-untyped-def]
    """The extraction task with retry count and backoff taken from settings."""
    return extract_region_task.with_options(
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_base_seconds)
        if settings.retry_base_seconds > 0
        else 0,
        retry_jitter_factor=settings.retry_jitter_factor,
        retry_condition_fn=_retry_unless_contract_error,
    )


def publish_extract_artifact(
    ctx: RunContext, summary: RunSummary, extracts: dict[str, RegionExtract]
) -> None:
    """Per region: rows, bytes, duration, source columns, schema changes, error."""
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
                "schema_fingerprint": result.schema_fingerprint if result else "",
                "schema_changes": result.schema_changes if result else "",
                "error": summary.regions[region].error or "",
            }
            for region in ctx.regions
            for result in [extracts.get(region)]
        ],
        description=f"Extraction of {ctx.run_date} (batch {ctx.batch_id})",
    )
