"""Load subflow: stage parquet; per region one transaction (COPY/MERGE, retractions, rejects,
ledger row); verify."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from retail_etl import humanize, progress
from retail_etl.contract import BATCH_REGION
from retail_etl.quality import QualityReport
from retail_etl.redact import scrub_secrets
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult
from retail_etl.warehouse import CheckResult, LedgerEntry, MergeResult
from retail_etl.warehouse.base import LedgerStatus
from tasks.results import collect
from tasks.runners import ConfiguredTaskRunner
from tasks.warehouse import (
    merge_regions_task,
    record_ledger_task,
    record_quality_task,
    stage_region_task,
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

    @property
    def unverified(self) -> list[str]:
        """Merged regions a failed post-load check speaks of (a batch-level one: all)."""
        failed = self.failed_checks
        batch_level = any(c.region == BATCH_REGION for c in failed)
        return sorted(r for r in self.merges if batch_level or any(c.region == r for c in failed))


def _ledger_entry(
    ctx: RunContext, result: RegionTransformResult, status: LedgerStatus, error: str
) -> LedgerEntry:
    return LedgerEntry(
        batch_id=ctx.batch_id,
        region=result.region,
        business_date=ctx.run_date,
        status=status,
        rows_extracted=result.rows_extracted,
        rows_accepted=result.rows_accepted,
        rows_rejected=result.rows_rejected,
        rows_retracted=result.rows_retracted,
        flow_run_id=ctx.flow_run_id,
        error=error,
    )


def _record(outcome: LoadOutcome, entries: list[LedgerEntry], settings: Settings) -> None:
    """Write ledger rows; a warehouse that cannot take them must not hide the run's result."""
    state = record_ledger_task(entries, settings, return_state=True)
    if not state.is_completed():
        outcome.ledger_errors.append(state.message or "recording the ledger failed")


@flow(
    name="load-batch",
    flow_run_name="load {ctx.run_date}",
    task_runner=ConfiguredTaskRunner(max_workers=4),
)
def load_batch(
    results: dict[str, RegionTransformResult],
    report: QualityReport,
    ctx: RunContext,
    settings: Settings,
    extract_seconds: dict[str, float],
) -> LoadOutcome:
    logger = get_run_logger()
    outcome = LoadOutcome()
    started = time.perf_counter()
    regions = list(results)
    for region in regions:
        progress.report(region, "loading")
    # Staging is independent per region; the warehouse takes one MERGE at a time.
    staged_futures = stage_region_task.map(
        [results[r] for r in regions], ctx=unmapped(ctx), settings=unmapped(settings)
    )
    staged, stage_failures = collect(regions, staged_futures)
    for region, failure in stage_failures.items():
        outcome.errors[region] = failure.error
    outcome.stage_seconds["stage"] = time.perf_counter() - started
    started = time.perf_counter()
    if staged:
        future = merge_regions_task.submit(
            {r: results[r] for r in staged}, staged, ctx, settings, extract_seconds
        )
        done, crashed = collect(["merge"], [future])
        if done:
            merged, errors = done["merge"]
            outcome.merges.update(merged)
            outcome.errors.update(errors)
        else:  # e.g. the warehouse cannot be opened: no region was merged
            outcome.errors.update({region: crashed["merge"].error for region in staged})
    outcome.stage_seconds["merge"] = time.perf_counter() - started
    started = time.perf_counter()
    if outcome.errors:
        _record(
            outcome,
            [
                _ledger_entry(ctx, results[region], "load_failed", error)
                for region, error in outcome.errors.items()
            ],
            settings,
        )
    if outcome.merges:
        verified = verify_task(
            list(outcome.merges.values()),
            {r: results[r] for r in outcome.merges},
            ctx,
            settings,
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
                    expected=1,
                    passed=False,
                    detail=scrub_secrets(verified.message or "verification failed to run"),
                )
            ]
    failed = outcome.failed_checks
    unverified = outcome.unverified
    if unverified:
        # The MERGE committed, but the day is not trusted: the ledger says so, and a
        # `backfill --missing-only` picks the region up again.
        _record(
            outcome,
            [
                _ledger_entry(
                    ctx,
                    results[region],
                    "verify_failed",
                    "; ".join(
                        f"{c.name}: {c.detail}"
                        for c in failed
                        if c.region in (region, BATCH_REGION)
                    ),
                )
                for region in unverified
            ],
            settings,
        )
    records = report.to_records() + [
        c.to_dq_record(ctx.batch_id, ctx.run_date, ctx.flow_run_id) for c in outcome.checks
    ]
    recorded = record_quality_task(records, settings, return_state=True)
    if not recorded.is_completed():
        outcome.ledger_errors.append(recorded.message or "recording dq_results failed")
    create_table_artifact(
        key=settings.artifact_key(f"load-{ctx.run_date.isoformat()}"),
        table=[
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
    return outcome
