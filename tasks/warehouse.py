"""Thin tasks over the run's staging store and warehouse (opened once per run, passed in).

They never cache (``NO_CACHE``): they do I/O, and a live store or warehouse has no stable
hash. Tasks that take them run in the flow process (called, or on a thread pool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.targets import Targets
from retail_etl.backfill import LedgerState
from retail_etl.housekeeping import sweep_leftovers
from retail_etl.manifest import write_manifest
from retail_etl.records import RegionRecord, transaction_groups
from retail_etl.redact import scrub_secrets
from retail_etl.resume import ResumePlan, batch_date, plan_resume
from retail_etl.run import RunContext
from retail_etl.settings import Settings
from retail_etl.staging import StagedFile, StagingStore
from retail_etl.transform import RegionTransformResult
from retail_etl.warehouse import (
    CheckResult,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    Warehouse,
)


@dataclass(frozen=True)
class StagedRegion:
    """A region's staged files: accepted rows, rejects, retractions."""

    sales: tuple[StagedFile, ...]
    rejects: tuple[StagedFile, ...]
    retractions: tuple[StagedFile, ...]

    def to_load(self, ctx: RunContext, record: RegionRecord) -> RegionLoad:
        """What the warehouse loads for the region (its record gives the ledger row)."""
        return RegionLoad(
            region=record.region,
            business_date=ctx.run_date,
            batch_id=ctx.batch_id,
            files=self.sales,
            flow_run_id=ctx.flow_run_id,
            reject_files=self.rejects,
            retraction_files=self.retractions,
            record=record,
        )


@task(name="open-targets", cache_policy=NO_CACHE, persist_result=False)  # live objects
def open_targets_task(settings: Settings) -> Targets:
    """The run's staging store and warehouse (their blocks loaded once per run)."""
    return Targets.open(settings)


@task(name="read-gate-inputs", cache_policy=NO_CACHE)
def read_gate_inputs_task(
    warehouse: Warehouse, regions: Sequence[str], business_date: date, days: int
) -> tuple[dict[str, list[tuple[date, int]]], dict[str, int]]:
    """What the quality gate reads from the warehouse, per region: the accepted row counts of
    the ``days`` loaded days before (the volume check), and the rows ``sales_fact`` already
    holds for the day (the missing-from-source check). One connection for every query (each
    open and close of the DuckDB file cost 40-100 ms)."""
    with warehouse.session():
        history = {
            region: warehouse.accepted_history(region, business_date, days) for region in regions
        }
        return history, {region: warehouse.day_keys(region, business_date) for region in regions}


@task(name="record-ledger", cache_policy=NO_CACHE)
def record_ledger_task(warehouse: Warehouse, entries: Sequence[LedgerEntry]) -> None:
    with warehouse.session():
        for entry in entries:
            warehouse.record_ledger(entry)


@task(name="ledger-states", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ledger_states_task(
    warehouse: Warehouse, start: date, end: date
) -> dict[tuple[str, date], LedgerState]:
    """Latest ledger status and source fingerprint of every (region, date) in [start, end]."""
    return warehouse.ledger_states(start, end)


@task(name="prepare-warehouse", cache_policy=NO_CACHE)
def ensure_schema_task(warehouse: Warehouse, stale_stage_table_hours: float) -> list[str]:
    with warehouse.session():
        added = warehouse.ensure_schema()
        warehouse.drop_stale_stage_tables(stale_stage_table_hours)
    if added:
        get_run_logger().warning("Warehouse columns added (nullable): %s", ", ".join(added))
    return added


@task(name="sweep-leftovers", cache_policy=NO_CACHE)
def sweep_leftovers_task(store: StagingStore, runs_dir: Path, retention_days: int) -> str:
    """Remove what killed runs left on disk and staged batches past retention."""
    report = sweep_leftovers(runs_dir, store, retention_days)
    if not report.empty:
        get_run_logger().warning("Housekeeping: %s", report.describe())
    return report.describe()


def stage_region(
    store: StagingStore, result: RegionTransformResult, ctx: RunContext, record: RegionRecord
) -> StagedRegion:
    """Stage a region's accepted rows, rejects and retractions in the hive layout, then the
    batch's manifest (files, rows, checksums, the record), so the load can be resumed."""
    sales = store.stage_dataset(
        "sales", ctx.run_date, result.region, ctx.batch_id, result.accepted_files
    )
    rejects = store.stage_dataset(
        "rejects", ctx.run_date, result.region, ctx.batch_id, result.reject_files
    )
    retractions = store.stage_dataset(
        "retractions", ctx.run_date, result.region, ctx.batch_id, result.retraction_files
    )
    write_manifest(
        store,
        batch_id=ctx.batch_id,
        business_date=ctx.run_date,
        record=record,
        flow_run_id=ctx.flow_run_id,
        staged={"sales": sales, "rejects": rejects, "retractions": retractions},
    )
    return StagedRegion(tuple(sales), tuple(rejects), tuple(retractions))


#: Regions staged at once: a remote store's uploads wait on the network, not on the CPU.
STAGE_THREADS = 4


@task(name="stage-regions", cache_policy=NO_CACHE)
def stage_regions_task(
    store: StagingStore,
    results: Sequence[RegionTransformResult],
    ctx: RunContext,
    records: Mapping[str, RegionRecord],
) -> tuple[dict[str, StagedRegion], dict[str, str]]:
    """Stage every region (:func:`stage_region`), up to :data:`STAGE_THREADS` at once, in one
    task run (at 50 regions, one task run each cost ~1 s of the load). A region that fails to
    stage fails alone. Returns (staged, errors) by region, in the order of ``results``."""
    with ThreadPoolExecutor(max_workers=STAGE_THREADS, thread_name_prefix="stage") as pool:
        futures = {
            r.region: pool.submit(stage_region, store, r, ctx, records[r.region]) for r in results
        }
    staged: dict[str, StagedRegion] = {}
    errors: dict[str, str] = {}
    for region, future in futures.items():
        try:
            staged[region] = future.result()
        except Exception as exc:  # any store error fails its region; the others load
            errors[region] = scrub_secrets(f"{type(exc).__name__}: {exc}")
            get_run_logger().error("Region %s not staged: %s", region, errors[region])
    return staged, errors


@task(name="merge-regions", cache_policy=NO_CACHE)
def merge_regions_task(
    warehouse: Warehouse, loads: Sequence[RegionLoad], max_rows_per_transaction: int
) -> tuple[dict[str, MergeResult], dict[str, str]]:
    """The regions in transactions of up to ``max_rows_per_transaction`` staged rows
    (:func:`~retail_etl.records.transaction_groups`; RETAIL_ETL_LOAD_TRANSACTION_ROWS), each
    one: COPY + MERGE (or INSERT, for a day with no stored key),
    retractions, the day's rejects replaced and the ledger rows. All on one warehouse
    connection (DuckDB checkpoints once, Snowflake logs in once, with the load's session
    settings). On a lock timeout the transaction is retried (RETAIL_ETL_LOAD_ATTEMPTS); if it
    still fails, each region is loaded in its own transaction, so one that fails is rolled
    back and reported and the others load.
    Returns (merges, errors) by region."""
    logger = get_run_logger()
    merges: dict[str, MergeResult] = {}
    failures: dict[str, Exception] = {}
    with warehouse.loading():
        for group in transaction_groups(loads, max_rows_per_transaction):
            group_merges, group_failures = warehouse.load_regions(group)
            merges.update(group_merges)
            failures.update(group_failures)
    errors: dict[str, str] = {}
    for load in loads:  # in the order given, as before
        region = load.region
        if region in failures:
            e = failures[region]
            errors[region] = scrub_secrets(f"{type(e).__name__}: {e}")
            logger.error("Region %s not loaded: %s", region, errors[region])
            continue
        merge = merges[region]
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


@task(name="verify-load", cache_policy=NO_CACHE)
def verify_task(
    warehouse: Warehouse,
    ctx: RunContext,
    merges: Sequence[MergeResult],
    records: Mapping[str, RegionRecord],
) -> list[CheckResult]:
    with warehouse.session():  # verify: 4 queries, whatever the number of regions
        return warehouse.verify(ctx.batch_id, ctx.run_date, merges, records=records)


@task(name="record-quality-results", cache_policy=NO_CACHE)
def record_quality_task(warehouse: Warehouse, records: list[dict[str, Any]]) -> int:
    return warehouse.load_dq_results(records)


@task(name="plan-resume", cache_policy=NO_CACHE)
def plan_resume_task(
    store: StagingStore, warehouse: Warehouse, batch_id: str, flow_run_id: str | None
) -> ResumePlan:
    """What resuming ``batch_id`` does: its manifests, staged files checked, the ledger read."""
    return plan_resume(store, batch_id, warehouse.ledger(batch_date(batch_id)), flow_run_id)
