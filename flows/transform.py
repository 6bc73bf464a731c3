"""Transform subflow: every region's extract -> accepted rows + rejects, concurrently."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from tasks.results import TaskFailure, collect
from tasks.transform import transform_region_task


@flow(name="transform-batch", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def transform_batch(
    extracts: dict[str, RegionExtract], ctx: RunContext, settings: Settings
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """Returns (results by region, errors by region)."""
    regions = list(extracts)
    # One region at a time with every DuckDB thread: on two cores, concurrent regions are
    # slower and each would need its own share of the memory cap.
    results: dict[str, RegionTransformResult] = {}
    failures: dict[str, TaskFailure] = {}
    for region in regions:
        future = transform_region_task.submit(
            extracts[region],
            ctx,
            settings,
            settings.duckdb_memory_limit,
            settings.duckdb_threads,
        )
        done, failed = collect([region], [future])
        results.update(done)
        failures.update(failed)
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
