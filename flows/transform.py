"""Transform subflow: every region's extract -> accepted rows + rejects.

The parent flow calls it while its extraction tasks are still running, with their futures:
a region's transform starts as soon as its extract lands (when the previous task is done),
one task at a time with every DuckDB thread (on two cores, concurrent transforms are slower;
the other regions' extraction keeps the second core busy meanwhile). The regions that landed
while a task ran go together in the next one: at 50 small regions, the task runs' fixed cost
was most of the transform's time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture

from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from tasks.artifacts import flush_if_outermost
from tasks.extract import landed_batches
from tasks.results import TaskFailure, collect
from tasks.runners import ConfiguredTaskRunner
from tasks.transform import publish_transform_artifact, transform_regions_task


@flow(
    name="transform-batch",
    flow_run_name="transform {ctx.run_date}",
    task_runner=ConfiguredTaskRunner(max_workers=1),
    validate_parameters=False,  # futures of the parent's extraction tasks
)
def transform_batch(
    extracting: Mapping[str, Sequence[PrefectFuture[RegionExtract]]],
    ctx: RunContext,
    settings: Settings,
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """Returns (results by region, errors by region) once every landed extract is done.

    ``extracting`` reaches this flow unresolved (the parent passes it under
    :func:`prefect.utilities.annotations.quote`), so each region is taken as it lands.
    """
    batches: list[tuple[list[str], PrefectFuture[Any]]] = []

    def previous_batch_done() -> None:
        # One batch at a time, on any runner: the previous one first, whatever its outcome
        # (a `wait_for` would skip this one when the previous failed).
        if batches:
            batches[-1][1].wait()

    for landed in landed_batches(extracting, previous_batch_done):
        extracts = [e for _, e in landed if not isinstance(e, TaskFailure)]  # the parent
        if not extracts:  # reports failed extracts
            continue
        future = transform_regions_task.submit(
            extracts,
            ctx,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            # files the staging store can publish as they are (no rewrite)
            max_file_rows=settings.target_file_rows,
            pass_rows=settings.transform_pass_rows,
        )
        batches.append(([e.region for e in extracts], future))
    results: dict[str, RegionTransformResult] = {}
    errors: dict[str, str] = {}
    for regions, future in batches:
        done, failed = collect(["batch"], [future])
        if done:
            results.update(done["batch"][0])
            errors.update(done["batch"][1])
        else:  # the task itself broke: none of its regions is transformed
            errors.update(dict.fromkeys(regions, failed["batch"].error))
    results = {r: results[r] for r in ctx.regions if r in results}  # the run's order
    publish_transform_artifact(ctx, results)
    flush_if_outermost()
    return results, errors
