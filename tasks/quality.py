"""The quality gate's checks as a task: a task run of its own (its inputs and verdict are
recorded), not the flow's own code. It reads no file: the transform measured the invariants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from prefect import task

from retail_etl.quality import QualityReport, QualityThresholds, evaluate_batch
from retail_etl.run import RunContext
from retail_etl.transform import RegionTransformResult


@task(name="evaluate-batch", task_run_name="quality-gate-{ctx.run_date}")
def evaluate_batch_task(
    results: Mapping[str, RegionTransformResult],
    ctx: RunContext,
    thresholds: QualityThresholds,
    history: Mapping[str, Sequence[tuple[date, int]]],
    stored_keys: Mapping[str, int],
) -> QualityReport:
    return evaluate_batch(
        results,
        business_date=ctx.run_date,
        batch_id=ctx.batch_id,
        thresholds=thresholds,
        history=history,
        stored_keys=stored_keys,
    )
