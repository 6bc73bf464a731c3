"""Transform subflow: every region's extract -> accepted rows + rejects.

The parent flow calls it while its extraction tasks are still running, with their futures:
a region's transform starts as soon as its extract lands, one region at a time with every
DuckDB thread (on two cores, concurrent transforms are slower; the other regions' extraction
keeps the second core busy meanwhile).
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
from tasks.extract import landed_extracts
from tasks.results import TaskFailure, collect
from tasks.runners import ConfiguredTaskRunner
from tasks.transform import publish_transform_artifact, transform_region_task


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
    futures: dict[str, PrefectFuture[Any]] = {}
    for region, extract in landed_extracts(extracting):
        if isinstance(extract, TaskFailure):
            continue  # the parent reports it
        # One region at a time, on any runner: the previous transform first, whatever its
        # outcome (a `wait_for` would skip this one when the previous failed).
        for previous in futures.values():
            previous.wait()
        futures[region] = transform_region_task.submit(
            extract,
            ctx,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            # files the staging store can publish as they are (no rewrite)
            max_file_rows=settings.target_file_rows,
        )
    regions = [r for r in ctx.regions if r in futures]
    results, failures = collect(regions, [futures[r] for r in regions])
    publish_transform_artifact(ctx, results)
    return results, {region: failure.error for region, failure in failures.items()}
