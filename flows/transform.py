"""Transform subflow: every region's extract -> accepted rows + rejects.

The parent flow calls it while the extraction tasks are still running and hands it an
:class:`~tasks.transform.ExtractFeed`: a region's transform starts as soon as its extract
lands, one region at a time with every DuckDB thread (on two cores, concurrent transforms
are slower; the other regions' extraction keeps the second core busy meanwhile).
"""

from __future__ import annotations

from prefect import flow

from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from tasks.runners import ConfiguredTaskRunner
from tasks.transform import ExtractFeed, RegionTransforms


@flow(
    name="transform-batch",
    flow_run_name="transform {ctx.run_date}",
    task_runner=ConfiguredTaskRunner(max_workers=4),
    validate_parameters=False,  # the feed is a live in-process object
)
def transform_batch(
    feed: ExtractFeed, ctx: RunContext, settings: Settings
) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
    """Returns (results by region, errors by region) once every landed extract is done."""
    transforms = RegionTransforms(ctx, settings)
    for region, extract in feed.landed():
        transforms.submit(region, extract)
    return transforms.collect()
