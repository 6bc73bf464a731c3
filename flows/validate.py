"""Validate subflow: the quality gate. Its verdict routes the run to load or to alert."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from retail_etl import progress
from retail_etl.quality import QualityReport, QualityThresholds, evaluate_batch
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from tasks.warehouse import read_history_task, read_stored_keys_task


@flow(name="validate-batch", flow_run_name="validate {ctx.run_date}")
def validate_batch(
    results: dict[str, RegionTransformResult], ctx: RunContext, settings: Settings
) -> QualityReport:
    logger = get_run_logger()
    for region in results:
        progress.report(region, "validating")
    thresholds = QualityThresholds.from_settings(settings)
    history = read_history_task(list(results), ctx.run_date, settings)
    stored_keys = read_stored_keys_task(list(results), ctx.run_date, settings)
    report = evaluate_batch(
        results,
        business_date=ctx.run_date,
        batch_id=ctx.batch_id,
        thresholds=thresholds,
        history=history,
        stored_keys=stored_keys,
    )
    create_markdown_artifact(
        key=settings.artifact_key(f"quality-{ctx.run_date.isoformat()}"),
        markdown=report.to_markdown(),
        description=f"Quality gate for {ctx.run_date} (batch {ctx.batch_id}): {report.verdict}",
    )
    if report.verdict == "pass":
        logger.info("Quality gate passed (%d checks)", len(report.checks))
    else:
        logger.warning(
            "Quality gate FAILED: %s",
            "; ".join(f"{c.region}/{c.name} {c.detail}" for c in report.failing),
        )
    return report
