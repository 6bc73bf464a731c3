"""Transform task: one region's extract into accepted rows and rejects (no retries: no I/O
beyond local files, a failure here is a bug or bad data, not a transient fault)."""

from __future__ import annotations

from prefect import get_run_logger, task

from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult, transform_region


@task(name="transform-region", task_run_name="transform-{extract.region}")
def transform_region_task(
    extract: RegionExtract, ctx: RunContext, settings: Settings, memory_limit: str, threads: int
) -> RegionTransformResult:
    result = transform_region(
        extract.files,
        region=extract.region,
        business_date=ctx.run_date,
        batch_id=ctx.batch_id,
        flow_run_id=ctx.flow_run_id,
        out_dir=ctx.transform_dir,
        memory_limit=memory_limit,
        threads=threads,
    )
    get_run_logger().info(
        "Region %s: %s extracted, %s accepted, %s rejected %s in %.2f s",
        result.region,
        f"{result.rows_extracted:,}",
        f"{result.rows_accepted:,}",
        f"{result.rows_rejected:,}",
        dict(sorted(result.reasons.items())),
        result.seconds,
    )
    return result
