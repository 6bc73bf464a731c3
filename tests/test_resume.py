"""Resume: a staged, validated batch loaded without extracting. The plan (manifest checks,
refusals, no-op) on a DuckDB warehouse without Prefect; the flow end to end after a load
failure injected through the warehouse seam."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from retail_etl.manifest import read_manifests, write_manifest
from retail_etl.records import RegionRecord
from retail_etl.resume import ResumeRefused, plan_resume
from retail_etl.staging import LocalStagingStore
from retail_etl.warehouse import Warehouse
from retail_etl.warehouse.dialects.duckdb import DuckDBDialect
from tests.pipeline import run_day
from tests.test_staging import accepted_table, write_parquet
from tests.warehouse_faults import FaultPlan

DAY = dt.date(2024, 1, 15)
B1 = "20240115_00000000000a"
B2 = "20240115_00000000000b"


@pytest.fixture
def warehouse(tmp_path: Path, store: LocalStagingStore) -> Warehouse:
    wh = Warehouse(DuckDBDialect(tmp_path / "wh.duckdb", store, threads=1), store)
    wh.ensure_schema()
    return wh


def stage_batch(
    tmp_path: Path, store: LocalStagingStore, batch_id: str, ids: range, region: str = "us_east"
) -> RegionRecord:
    """Stage a region's batch as the load subflow does, with its manifest."""
    sales = accepted_table(region, DAY, ids, batch_id=batch_id)
    staged = {
        "sales": store.stage_dataset(
            "sales",
            DAY,
            region,
            batch_id,
            [write_parquet(tmp_path / f"{batch_id}-{region}.parquet", sales)],
        ),
        "rejects": store.stage_dataset("rejects", DAY, region, batch_id, []),
        "retractions": store.stage_dataset("retractions", DAY, region, batch_id, []),
    }
    record = RegionRecord(region, rows_extracted=len(ids), rows_accepted=len(ids))
    write_manifest(
        store,
        batch_id=batch_id,
        business_date=DAY,
        record=record,
        flow_run_id="flow-1",
        staged=staged,
    )
    return record


def plan(store: LocalStagingStore, warehouse: Warehouse, batch_id: str):  # type: ignore[no-untyped-def]
    return plan_resume(store, batch_id, warehouse.ledger(DAY), "resume-run")


def fact_ids(warehouse: Warehouse) -> list[tuple[str, int, str]]:
    return sorted((r["region"], r["sale_id"], r["batch_id"]) for r in warehouse.fact_rows())


def test_resume_after_a_failed_load_loads_exactly_the_staged_rows_once(
    tmp_path: Path, store: LocalStagingStore, warehouse: Warehouse
) -> None:
    stage_batch(tmp_path, store, B1, range(1, 11))
    stage_batch(tmp_path, store, B1, range(1, 6), region="europe")
    _, manifest = read_manifests(store, B1, DAY)  # europe, us_east (by region)
    failing = Warehouse(DuckDBDialect(warehouse.dialect.path, store, threads=1), store)  # type: ignore[attr-defined]
    FaultPlan("merge").apply(failing.dialect)
    with pytest.raises(Exception, match="injected warehouse failure"):
        failing.load_region(manifest.to_load("flow-1"))
    assert fact_ids(warehouse) == []

    first = plan(store, warehouse, B1)
    assert [load.region for load in first.loads] == ["europe", "us_east"]
    assert first.refused == {} and first.done == {}
    for load in first.loads:
        warehouse.load_region(load)
    assert fact_ids(warehouse) == sorted(
        [("us_east", i, B1) for i in range(1, 11)] + [("europe", i, B1) for i in range(1, 6)]
    )
    loaded = [r for r in warehouse.ledger(DAY) if r["status"] == "loaded"]
    assert sorted((r["region"], r["rows_inserted"], r["flow_run_id"]) for r in loaded) == [
        ("europe", 5, "resume-run"),
        ("us_east", 10, "resume-run"),
    ]

    again = plan(store, warehouse, B1)  # twice: a no-op
    assert again.loads == [] and set(again.done) == {"us_east", "europe"}


def test_a_tampered_or_missing_staged_file_is_refused(
    tmp_path: Path, store: LocalStagingStore, warehouse: Warehouse
) -> None:
    stage_batch(tmp_path, store, B1, range(1, 11))
    stage_batch(tmp_path, store, B1, range(1, 6), region="europe")
    europe, us_east = read_manifests(store, B1, DAY)
    # us_east: one staged file replaced by other rows; europe: its file deleted
    tampered = store.local_path(us_east.files["sales"][0].key)
    assert tampered is not None
    write_parquet(tampered, accepted_table("us_east", DAY, range(1, 12), batch_id=B1))
    store.delete_keys([europe.files["sales"][0].key])

    refused = plan(store, warehouse, B1)
    assert refused.loads == []
    assert "changed since it was staged" in refused.refused["us_east"]
    assert "region us_east 2024-01-15 (batch " + B1 + ")" in refused.refused["us_east"]
    assert "is missing" in refused.refused["europe"]
    assert fact_ids(warehouse) == []

    with pytest.raises(ResumeRefused, match="has no staged manifest"):
        plan(store, warehouse, "20240116_00000000000c")


def test_a_newer_batch_loaded_since_makes_resume_refuse(
    tmp_path: Path, store: LocalStagingStore, warehouse: Warehouse
) -> None:
    stage_batch(tmp_path, store, B1, range(1, 11))  # B1's load failed (never loaded)
    stage_batch(tmp_path, store, B2, range(1, 8))  # a later run staged and loaded B2
    (b2,) = read_manifests(store, B2, DAY)
    warehouse.load_region(b2.to_load("flow-2"))
    # B1's files are still staged next to B2's (kept until retention)
    (b1,) = read_manifests(store, B1, DAY)
    assert all(store.local_path(f.key).is_file() for f in b1.files["sales"])  # type: ignore[union-attr]

    refused = plan(store, warehouse, B1)
    assert refused.loads == []
    assert f"batch {B2} of that day loaded at" in refused.refused["us_east"]
    assert "region us_east 2024-01-15 (batch " + B1 + ")" in refused.refused["us_east"]
    assert fact_ids(warehouse) == [("us_east", i, B2) for i in range(1, 8)]


@pytest.mark.integration
def test_resume_flow_after_a_load_failure_then_twice_is_a_no_op(etl_env, monkeypatch):
    from flows.resume import retail_sales_resume
    from retail_etl.alerts import resume_commands

    etl_env.seed(days=1, rows=800, start=DAY)
    regions = ["us_east", "europe"]
    with monkeypatch.context() as patch:
        # three writes into the fact fail: the load of both regions in one transaction, then
        # each region's own load after it
        FaultPlan("merge", times=3).install(patch)
        state, summary = run_day(DAY, regions)
    assert state.is_failed()
    assert {summary.regions[r].status for r in regions} == {"load_failed"}
    assert resume_commands(summary)[0] == f"retail-etl resume --batch {summary.batch_id}"

    resumed = retail_sales_resume(batch_id=summary.batch_id, return_state=True)

    assert resumed.is_completed(), resumed.message
    for region in regions:
        assert etl_env.fact(region, DAY) == etl_env.expected_accepted(region, DAY)
    ledger = etl_env.warehouse(
        "SELECT region, status, rows_accepted, rows_inserted FROM etl_load_ledger "
        "ORDER BY region, finished_at"
    )
    assert [(r, s) for r, s, _, _ in ledger] == [
        ("europe", "load_failed"),
        ("europe", "loaded"),
        ("us_east", "load_failed"),
        ("us_east", "loaded"),
    ]
    for region, status, accepted, inserted in ledger:
        if status == "loaded":
            assert accepted == inserted == summary.regions[region].rows_accepted

    again = retail_sales_resume(batch_id=summary.batch_id, return_state=True)
    assert again.is_completed() and "loaded already" in (again.message or "")
    assert len(etl_env.warehouse("SELECT * FROM etl_load_ledger")) == 4
