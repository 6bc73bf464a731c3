"""Transform task: one region's extract into accepted rows and rejects (no retries: no I/O
beyond local files, a failure here is a bug or bad data, not a transient fault)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import task_run

from retail_etl import humanize, progress
from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import get_settings
from retail_etl.transform import (
    RegionTransformResult,
    transform_connection,
    transform_regions,
)
from tasks.artifacts import publish_table


def _transform_run_name() -> str:
    regions = [e.region for e in task_run.parameters["extracts"]]
    return f"transform-{regions[0]}" + (f"-and-{len(regions) - 1}-more" if len(regions) > 1 else "")


@task(name="transform-regions", task_run_name=_transform_run_name)
def transform_regions_task(
    extracts: list[RegionExtract],
    ctx: RunContext,
    *,
    memory_limit: str,
    threads: int,
    max_file_rows: int,
    pass_rows: int,
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """The regions' extracts in one task (the regions that landed together: one task run's
    overhead for many small regions, not one each; small ones share DuckDB passes). A region
    whose data does not transform fails alone; returns (results, errors) by region."""
    for extract in extracts:
        progress.report(extract.region, "transforming")
    # one DuckDB connection for the regions (its start-up paid once, not per region)
    with transform_connection(
        ctx.run_dir, memory_limit=memory_limit, threads=threads
    ) as connection:
        results, failures = transform_regions(
            {e.region: e.files for e in extracts},
            business_date=ctx.run_date,
            batch_id=ctx.batch_id,
            flow_run_id=ctx.flow_run_id,
            out_dir=ctx.run_dir,
            connection=connection,
            pass_rows=pass_rows,
            max_file_rows=max_file_rows,
        )
    logger = get_run_logger()
    errors: dict[str, str] = {}
    for region, error in failures.items():
        errors[region] = f"{type(error).__name__}: {error}"
        progress.report(region, "transform_failed", detail=errors[region][:120])
        logger.error("Region %s not transformed: %s", region, errors[region])
    for result in results.values():
        _report(result)
    return results, errors


def _report(result: RegionTransformResult) -> None:
    get_run_logger().info(
        "Region %s: %s extracted, %s accepted, %s rejected %s, %s retracted %s in %.2f s",
        result.region,
        humanize.count(result.rows_extracted),
        humanize.count(result.rows_accepted),
        humanize.count(result.rows_rejected),
        dict(sorted(result.reasons.items())),
        f"{result.rows_retracted:,}",
        dict(sorted(result.retraction_reasons.items())),
        result.seconds,
    )
    progress.report(
        result.region,
        "transformed",
        detail=f"{humanize.count(result.rows_accepted)} accepted, "
        f"{humanize.count(result.rows_rejected)} rejected",
    )


def publish_transform_artifact(ctx: RunContext, results: dict[str, RegionTransformResult]) -> None:
    publish_table(
        get_settings().artifact_key(f"transform-{ctx.run_date.isoformat()}"),
        [
            {
                "region": r.region,
                "extracted": humanize.count(r.rows_extracted),
                "accepted": humanize.count(r.rows_accepted),
                "rejected": humanize.count(r.rows_rejected),
                "reasons": ", ".join(
                    f"{k}: {humanize.count(v)}" for k, v in sorted(r.reasons.items())
                ),
                "retracted": humanize.count(r.rows_retracted),
                "retraction_reasons": ", ".join(
                    f"{k}: {humanize.count(v)}" for k, v in sorted(r.retraction_reasons.items())
                ),
                "total_amount_extracted": f"{r.total_amount_extracted:,.2f}",
                "total_amount_accepted": f"{r.total_amount_accepted:,.2f}",
                "total_amount_rejected": f"{r.total_amount_rejected:,.2f}",
                "total_amount_retracted": f"{r.total_amount_retracted:,.2f}",
                "seconds": humanize.seconds(r.seconds),
            }
            for r in results.values()
        ],
        description=f"Transform of {ctx.run_date} (batch {ctx.batch_id}): every row accepted, rejected or retracted",
    )
