"""Transform subflow: every region's extract -> accepted rows + rejects, concurrently."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from tasks.results import collect
from tasks.transform import transform_region_task


@flow(name="transform-batch", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def transform_batch(
    extracts: dict[str, RegionExtract], ctx: RunContext, settings: Settings
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """Returns (results by region, errors by region)."""
    regions = list(extracts)
    # All regions at once, one DuckDB thread each, sharing the configured memory cap.
    memory_limit = settings.duckdb_memory_share(len(regions))
    futures = transform_region_task.map(
        [extracts[r] for r in regions],
        ctx=unmapped(ctx),
        settings=unmapped(settings),
        memory_limit=unmapped(memory_limit),
        threads=unmapped(1),
    )
    results, failures = collect(regions, futures)
    create_table_artifact(
        key=f"transform-{ctx.run_date.isoformat()}",
        table=[
            {
                "region": r.region,
                "extracted": r.rows_extracted,
                "accepted": r.rows_accepted,
                "rejected": r.rows_rejected,
                "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(r.reasons.items())),
                "total_amount_extracted": str(r.total_amount_extracted),
                "total_amount_accepted": str(r.total_amount_accepted),
                "total_amount_rejected": str(r.total_amount_rejected),
                "seconds": round(r.seconds, 3),
            }
            for r in results.values()
        ],
        description=f"Transform of {ctx.run_date} (batch {ctx.batch_id}): every row accepted or rejected",
    )
    return results, {region: failure.error for region, failure in failures.items()}
