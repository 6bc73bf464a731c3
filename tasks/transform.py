"""Transform task: one region's extract into accepted rows and rejects (no retries: no I/O
beyond local files, a failure here is a bug or bad data, not a transient fault)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture

from retail_etl import humanize, progress
from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.settings import Settings, get_settings
from retail_etl.transform import RegionTransformResult, transform_region
from tasks.results import collect


@task(name="transform-region", task_run_name="transform-{extract.region}")
def transform_region_task(
    extract: RegionExtract, ctx: RunContext, settings: Settings
) -> RegionTransformResult:
    progress.report(extract.region, "transforming")
    result = transform_region(
        extract.files,
        region=extract.region,
        business_date=ctx.run_date,
        batch_id=ctx.batch_id,
        flow_run_id=ctx.flow_run_id,
        out_dir=ctx.run_dir,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        # files the staging store can publish as they are (no rewrite)
        max_file_rows=settings.target_file_rows,
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


class ExtractFeed:
    """Extracts handed from the extraction (parent flow) to the transform subflow as each
    region lands. Filled from the extraction thread, read by :meth:`landed` in the subflow."""

    _DONE = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, region: str, extract: RegionExtract) -> None:
        self._queue.put((region, extract))

    def close(self) -> None:
        """No more extracts will come (always called, also when extraction failed)."""
        self._queue.put(self._DONE)

    def landed(self) -> Iterator[tuple[str, RegionExtract]]:
        while (item := self._queue.get()) is not self._DONE:
            yield item

    def __repr__(self) -> str:  # what the flow run's parameters show
        return "<ExtractFeed>"

    # Task runners that ship the flow-run context to other processes (Dask) pickle the
    # subflow's parameters too; a copy elsewhere has nothing to read, so it travels empty.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._queue = queue.SimpleQueue()
        self._queue.put(self._DONE)


class RegionTransforms:
    """Transform tasks started as soon as each region's extract lands (the transform subflow
    calls ``submit`` for each extract :class:`ExtractFeed` hands it), one region at a time
    with every DuckDB thread and the whole memory cap: on two cores concurrent transforms are
    slower, and the extraction of the other regions keeps the second core busy meanwhile.
    """

    def __init__(self, ctx: RunContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.futures: dict[str, PrefectFuture[Any]] = {}
        self._last: PrefectFuture[Any] | None = None

    def submit(self, region: str, extract: RegionExtract) -> None:
        # One region at a time: wait for the previous transform (whatever its outcome)
        # rather than chaining futures, which Dask cannot ship between flow runs.
        if self._last is not None:
            self._last.wait()
        future = transform_region_task.submit(
            extract,
            self.ctx,
            self.settings,
        )
        self.futures[region] = future
        self._last = future

    def collect(self) -> tuple[dict[str, RegionTransformResult], dict[str, str]]:
        """Wait for every transform; (results by region, errors by region), and the artifact."""
        regions = [r for r in self.ctx.regions if r in self.futures]
        results, failures = collect(regions, [self.futures[r] for r in regions])
        publish_transform_artifact(self.ctx, results)
        return results, {region: failure.error for region, failure in failures.items()}


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
