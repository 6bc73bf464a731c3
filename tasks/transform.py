"""Transform task: one region's extract into accepted rows and rejects (no retries: no I/O
beyond local files, a failure here is a bug or bad data, not a transient fault)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import task_run

from retail_etl import humanize, progress
from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import get_settings
from retail_etl.transform import (
    RegionTransformResult,
    TransformConnection,
    TransformError,
    transform_connection,
    transform_region,
)


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
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """The regions' extracts in turn, in one task (the regions that landed together: one task
    run's overhead for many small regions, not one each). A region whose data does not
    transform fails alone; returns (results, errors) by region."""
    results: dict[str, RegionTransformResult] = {}
    errors: dict[str, str] = {}
    # one DuckDB connection for the regions in turn (its start-up paid once, not per region)
    with transform_connection(
        ctx.run_dir, memory_limit=memory_limit, threads=threads
    ) as connection:
        for extract in extracts:
            try:
                results[extract.region] = _transform_one(
                    extract, ctx, connection=connection, max_file_rows=max_file_rows
                )
            except (TransformError, OSError) as e:
                errors[extract.region] = f"{type(e).__name__}: {e}"
                progress.report(
                    extract.region, "transform_failed", detail=errors[extract.region][:120]
                )
                get_run_logger().error(
                    "Region %s not transformed: %s", extract.region, errors[extract.region]
                )
    return results, errors


def _transform_one(
    extract: RegionExtract,
    ctx: RunContext,
    *,
    connection: TransformConnection,
    max_file_rows: int,
) -> RegionTransformResult:
    progress.report(extract.region, "transforming")
    result = transform_region(
        extract.files,
        region=extract.region,
        business_date=ctx.run_date,
        batch_id=ctx.batch_id,
        flow_run_id=ctx.flow_run_id,
        out_dir=ctx.run_dir,
        max_file_rows=max_file_rows,
        connection=connection,
    )
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
    return result


def publish_transform_artifact(ctx: RunContext, results: dict[str, RegionTransformResult]) -> None:
    create_table_artifact(
        key=get_settings().artifact_key(f"transform-{ctx.run_date.isoformat()}"),
        table=[
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
