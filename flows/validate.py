"""Validate subflow: the quality gate. Its verdict routes the run to load or to alert."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.targets import Targets
from retail_etl import progress
from retail_etl.quality import QualityReport, QualityThresholds
from retail_etl.run import RunContext
from retail_etl.settings import get_settings
from retail_etl.transform import RegionTransformResult
from tasks.artifacts import flush_if_outermost, publish_markdown
from tasks.quality import evaluate_batch_task
from tasks.warehouse import read_gate_inputs_task


@flow(
    name="validate-batch",
    flow_run_name="validate {ctx.run_date}",
    validate_parameters=False,  # the run's targets are live objects
)
def validate_batch(
    results: dict[str, RegionTransformResult],
    ctx: RunContext,
    thresholds: QualityThresholds,
    targets: Targets,
) -> QualityReport:
    logger = get_run_logger()
    for region in results:
        progress.report(region, "validating")
    regions, warehouse = list(results), targets.warehouse
    history, stored_keys = read_gate_inputs_task(
        warehouse, regions, ctx.run_date, thresholds.history_days
    )
    report = evaluate_batch_task(results, ctx, thresholds, history, stored_keys)
    publish_markdown(
        get_settings().artifact_key(f"quality-{ctx.run_date.isoformat()}"),
        report.to_markdown(),
        description=f"Quality gate for {ctx.run_date} (batch {ctx.batch_id}): {report.verdict}",
    )
    if report.verdict == "pass":
        logger.info("Quality gate passed (%d checks)", len(report.checks))
    else:
        logger.warning(
            "Quality gate FAILED: %s",
            "; ".join(f"{c.region}/{c.name} {c.detail}" for c in report.failing),
        )
    flush_if_outermost()
    return report
