"""Thin tasks over the staging store and the warehouse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from prefect import get_run_logger, task

from blocks.targets import open_staging_store, open_targets
from retail_etl.backfill import LedgerState
from retail_etl.housekeeping import sweep_leftovers
from retail_etl.redact import scrub_secrets
from retail_etl.run import RunContext
from retail_etl.settings import InvalidIdentifierError, Settings
from retail_etl.staging import StagedFile
from retail_etl.transform import RegionTransformResult
from retail_etl.warehouse import (
    CheckResult,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    TransformCounts,
    WarehouseError,
)


@dataclass(frozen=True)
class StagedRegion:
    """A region's staged files: accepted rows, rejects, retractions."""

    sales: tuple[StagedFile, ...]
    rejects: tuple[StagedFile, ...]
    retractions: tuple[StagedFile, ...]


@task(name="read-history")
def read_history_task(
    regions: Sequence[str], business_date: date, settings: Settings
) -> dict[str, list[tuple[date, int]]]:
    """Accepted row counts of earlier loaded days, per region (for the volume check)."""
    _, warehouse = open_targets(settings)
    with warehouse.session():  # one connection for every region's query
        return {
            region: warehouse.accepted_history(region, business_date, settings.history_days)
            for region in regions
        }


@task(name="read-stored-keys")
def read_stored_keys_task(
    regions: Sequence[str], business_date: date, settings: Settings
) -> dict[str, int]:
    """Rows sales_fact already holds per region for the day (for the missing-from-source check)."""
    _, warehouse = open_targets(settings)
    with warehouse.session():
        return {region: warehouse.day_keys(region, business_date) for region in regions}


@task(name="record-ledger")
def record_ledger_task(entries: Sequence[LedgerEntry], settings: Settings) -> None:
    _, warehouse = open_targets(settings)
    with warehouse.session():
        for entry in entries:
            warehouse.record_ledger(entry)


@task(name="ledger-states", retries=2, retry_delay_seconds=5)
def ledger_states_task(
    start: date, end: date, settings: Settings
) -> dict[tuple[str, date], LedgerState]:
    """Latest ledger status and source fingerprint of every (region, date) in [start, end]."""
    _, warehouse = open_targets(settings)
    return warehouse.ledger_states(start, end)


@task(name="prepare-warehouse")
def ensure_schema_task(settings: Settings) -> list[str]:
    _, warehouse = open_targets(settings)
    with warehouse.session():
        added = warehouse.ensure_schema()
        warehouse.drop_stale_stage_tables(settings.stale_stage_table_hours)
    if added:
        get_run_logger().warning("Warehouse columns added (nullable): %s", ", ".join(added))
    return added


@task(name="sweep-leftovers")
def sweep_leftovers_task(settings: Settings) -> str:
    """Remove what killed runs left on disk and staged batches past retention."""
    report = sweep_leftovers(
        settings.runs_dir, open_staging_store(settings), settings.staging_retention_days
    )
    if not report.empty:
        get_run_logger().warning("Housekeeping: %s", report.describe())
    return report.describe()


@task(name="stage-region", task_run_name="stage-{result.region}")
def stage_region_task(
    result: RegionTransformResult, ctx: RunContext, settings: Settings
) -> StagedRegion:
    """Stage a region's accepted rows, rejects and retractions in the hive layout."""
    store = open_staging_store(settings)
    sales = store.stage_dataset(
        "sales", ctx.run_date, result.region, ctx.batch_id, result.accepted_files
    )
    rejects = store.stage_dataset(
        "rejects", ctx.run_date, result.region, ctx.batch_id, result.reject_files
    )
    retractions = store.stage_dataset(
        "retractions", ctx.run_date, result.region, ctx.batch_id, result.retraction_files
    )
    return StagedRegion(tuple(sales), tuple(rejects), tuple(retractions))


@task(name="merge-regions")
def merge_regions_task(
    results: dict[str, RegionTransformResult],
    staged: dict[str, StagedRegion],
    ctx: RunContext,
    settings: Settings,
    extract_seconds: dict[str, float],
) -> tuple[dict[str, MergeResult], dict[str, str]]:
    """Per region, in turn, one transaction: COPY + MERGE, retractions, the day's rejects
    replaced and the ledger row. All on one warehouse connection (DuckDB checkpoints once, Snowflake logs in
    once). A region that fails is rolled back and reported; the next region goes on.
    Returns (merges, errors) by region."""
    logger = get_run_logger()
    _, warehouse = open_targets(settings)
    merges: dict[str, MergeResult] = {}
    errors: dict[str, str] = {}
    with warehouse.session():
        for region, files in staged.items():
            result = results[region]
            try:
                merge = warehouse.load_region(
                    RegionLoad(
                        region=region,
                        business_date=ctx.run_date,
                        batch_id=ctx.batch_id,
                        files=files.sales,
                        flow_run_id=ctx.flow_run_id,
                        rows_extracted=result.rows_extracted,
                        rows_accepted=result.rows_accepted,
                        rows_rejected=result.rows_rejected,
                        extract_seconds=extract_seconds.get(region, 0.0),
                        transform_seconds=result.seconds,
                        source_fingerprint=ctx.source_fingerprints.get(region),
                        reject_files=files.rejects,
                        retraction_files=files.retractions,
                        rows_retracted=result.rows_retracted,
                    )
                )
            except (WarehouseError, InvalidIdentifierError) as e:  # only this region
                errors[region] = scrub_secrets(f"{type(e).__name__}: {e}")
                logger.error("Region %s not loaded: %s", region, errors[region])
                continue
            merges[region] = merge
            logger.info(
                "Region %s merged: %s inserted, %s updated, %s unchanged, %s retracted from "
                "sales_fact in %.2f s",
                region,
                f"{merge.inserted:,}",
                f"{merge.updated:,}",
                f"{merge.unchanged:,}",
                f"{merge.deleted:,}",
                merge.seconds,
            )
    return merges, errors


@task(name="verify-load")
def verify_task(
    merges: Sequence[MergeResult],
    results: dict[str, RegionTransformResult],
    ctx: RunContext,
    settings: Settings,
) -> list[CheckResult]:
    _, warehouse = open_targets(settings)
    counts = {
        region: TransformCounts(
            r.rows_extracted, r.rows_accepted, r.rows_rejected, r.rows_retracted
        )
        for region, r in results.items()
    }
    with warehouse.session():  # verify runs 2 + one query per region
        return warehouse.verify(ctx.batch_id, ctx.run_date, merges, transform_counts=counts)


@task(name="record-quality-results")
def record_quality_task(records: list[dict[str, Any]], settings: Settings) -> int:
    _, warehouse = open_targets(settings)
    return warehouse.load_dq_results(records)
