"""Load subflow: stage parquet; per region one transaction (COPY/MERGE, retractions, rejects,
the 'loaded' ledger row); verify.

Its tasks work on the run's store and warehouse, on threads of the flow process whatever
``RETAIL_ETL_TASK_RUNNER`` says: one writer, and live connections do not travel.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.targets import Targets
from retail_etl import humanize, progress
from retail_etl.contract import BATCH_REGION
from retail_etl.quality import QualityReport
from retail_etl.records import RegionRecord
from retail_etl.redact import scrub_secrets
from retail_etl.run import RunContext
from retail_etl.settings import get_settings
from retail_etl.transform import RegionTransformResult
from retail_etl.warehouse import CheckResult, MergeResult
from tasks.artifacts import flush_if_outermost, publish_table
from tasks.results import collect
from tasks.warehouse import (
    merge_regions_task,
    record_quality_task,
    stage_regions_task,
    verify_task,
)


@dataclass
class LoadOutcome:
    merges: dict[str, MergeResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    ledger_errors: list[str] = field(default_factory=list)
    #: wall seconds of the load's steps: stage, merge (COPY + MERGE + retractions + rejects), verify
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


@flow(
    name="load-batch",
    flow_run_name="load {ctx.run_date}",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    validate_parameters=False,  # the run's store and warehouse are live objects
)
def load_batch(
    results: dict[str, RegionTransformResult],
    records: Mapping[str, RegionRecord],
    report: QualityReport,
    ctx: RunContext,
    targets: Targets,
) -> LoadOutcome:
    """``records``: the regions' records so far (their counts go into the ledger rows)."""
    logger = get_run_logger()
    store, warehouse = targets.store, targets.warehouse
    outcome = LoadOutcome()
    started = time.perf_counter()
    regions = list(results)
    for region in regions:
        progress.report(region, "loading")
    # Staging is independent per region (one task, threads); the warehouse takes the MERGEs.
    staging = stage_regions_task(
        store, [results[r] for r in regions], ctx, records, return_state=True
    )
    if staging.is_completed():
        staged, stage_errors = staging.result()
        outcome.errors.update(stage_errors)
    else:  # the task itself broke: no region is staged
        staged = {}
        outcome.errors.update(
            dict.fromkeys(regions, scrub_secrets(staging.message or "staging failed"))
        )
    outcome.stage_seconds["stage"] = time.perf_counter() - started
    started = time.perf_counter()
    if staged:
        loads = [staged[r].to_load(ctx, records[r]) for r in staged]
        done, crashed = collect(
            ["merge"],
            [merge_regions_task.submit(warehouse, loads, get_settings().load_transaction_rows)],
        )
        if done:
            merges, errors = done["merge"]
            outcome.merges.update(merges)
            outcome.errors.update(errors)
        else:  # e.g. the warehouse cannot be opened: no region was merged
            outcome.errors.update(dict.fromkeys(staged, crashed["merge"].error))
    outcome.stage_seconds["merge"] = time.perf_counter() - started
    started = time.perf_counter()
    if outcome.merges:
        verified = verify_task(
            warehouse,
            ctx,
            list(outcome.merges.values()),
            {r: records[r] for r in outcome.merges},
            return_state=True,
        )
        if verified.is_completed():
            outcome.checks = verified.result()
        else:  # verification could not run: the merged days are not trusted either
            outcome.checks = [
                CheckResult(
                    name="verification_ran",
                    region=BATCH_REGION,
                    measured=0,
                    threshold=1,
                    status="fail",
                    detail=scrub_secrets(verified.message or "verification failed to run"),
                )
            ]
    dq_records = report.to_records(ctx.flow_run_id) + [
        c.dq_record(ctx.batch_id, ctx.run_date, ctx.flow_run_id) for c in outcome.checks
    ]
    recorded = record_quality_task(warehouse, dq_records, return_state=True)
    if not recorded.is_completed():
        outcome.ledger_errors.append(recorded.message or "recording dq_results failed")
    publish_table(
        get_settings().artifact_key(f"load-{ctx.run_date.isoformat()}"),
        [
            {
                "region": m.region,
                "staged": humanize.count(m.staged_rows),
                "inserted": humanize.count(m.inserted),
                "updated": humanize.count(m.updated),
                "unchanged": humanize.count(m.unchanged),
                "retracted": humanize.count(m.deleted),
                "rejects": humanize.count(m.rejects),
                "seconds": humanize.seconds(m.seconds),
            }
            for m in outcome.merges.values()
        ]
        + [{"region": r, "error": e} for r, e in outcome.errors.items()],
        description=f"Load of {ctx.run_date} (batch {ctx.batch_id})",
    )
    for check in outcome.failed_checks:
        logger.error("Verification failed: %s/%s: %s", check.region, check.name, check.detail)
    outcome.stage_seconds["verify"] = time.perf_counter() - started
    flush_if_outermost()
    return outcome
