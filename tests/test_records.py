"""One record per region and the one function that derives its ledger row (no Prefect)."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest

from retail_etl.records import (
    LEDGER_STATUSES,
    CheckResult,
    LedgerEntry,
    RegionLoad,
    RegionRecord,
    ledger_entry,
    loaded_ledger_entry,
)
from retail_etl.run import RunContext, RunSummary
from retail_etl.warehouse.base import LEDGER_COLUMNS

DAY = date(2024, 1, 15)
BATCH = "20240115_0123456789ab"


def _summary(*regions: str) -> RunSummary:
    ctx = RunContext(DAY, regions, BATCH, "flow-1", run_dir=None)  # type: ignore[arg-type]
    return RunSummary.start(ctx)


def _check(name: str, region: str, passed: bool = False) -> SimpleNamespace:
    return SimpleNamespace(name=name, region=region, passed=passed, detail=f"{name} detail")


def test_a_ledger_entry_has_the_ledger_table_columns_in_order():
    assert [f.name for f in fields(LedgerEntry)] == [c.name for c in LEDGER_COLUMNS]
    entry = LedgerEntry(BATCH, "us_east", DAY, "deferred", error="not closed")
    assert dict(zip([c.name for c in LEDGER_COLUMNS], entry.row(), strict=True))["error"] == (
        "not closed"
    )


def test_a_region_gets_no_ledger_row_before_its_run_ends():
    with pytest.raises(ValueError, match="still 'transformed'"):
        ledger_entry(
            RegionRecord("us_east", "transformed"),
            batch_id=BATCH,
            business_date=DAY,
            flow_run_id="f",
        )


def test_the_loaded_row_carries_the_record_and_what_the_merge_did():
    record = RegionRecord(
        "us_east",
        "transformed",
        rows_extracted=12,
        rows_accepted=9,
        rows_rejected=2,
        rows_retracted=1,
        extract_seconds=1.5,
        transform_seconds=0.5,
        source_fingerprint="fp",
    )
    load = RegionLoad("us_east", DAY, BATCH, (), flow_run_id="f", record=record)
    started = datetime(2024, 1, 16, 2, 0, tzinfo=UTC)
    entry = loaded_ledger_entry(load, 7, 1, 1, 0.25, started, deleted=3)

    assert entry.status == "loaded" and entry.started_at == started
    assert (entry.rows_extracted, entry.rows_accepted, entry.rows_rejected) == (12, 9, 2)
    assert (entry.rows_inserted, entry.rows_updated, entry.rows_unchanged) == (7, 1, 1)
    assert (entry.rows_retracted, entry.rows_deleted) == (1, 3)
    assert (entry.extract_seconds, entry.transform_seconds, entry.load_seconds) == (1.5, 0.5, 0.25)
    assert entry.source_fingerprint == "fp" and entry.flow_run_id == "f"
    assert record.status == "transformed"  # the record itself is not changed


def test_the_run_writes_a_row_for_every_region_that_ended_except_the_loaded_ones():
    summary = _summary("us_east", "us_west", "europe", "apac", "latam")
    summary.record_deferred([SimpleNamespace(region="latam", reason="day not closed")])
    summary.fail_regions(["apac"], "extract_failed", "connection refused")
    merge = SimpleNamespace(inserted=5, updated=0, unchanged=0, deleted=0, seconds=0.1)
    summary.record_load(
        {"us_east": merge, "us_west": merge},
        {"europe": "WarehouseLoadError: boom"},
        [_check("retracted_keys_absent", "us_west")],
    )

    rows = {e.region: e for e in summary.ledger_entries()}

    assert {r: e.status for r, e in rows.items()} == {
        "us_west": "verify_failed",
        "europe": "load_failed",
        "apac": "extract_failed",
        "latam": "deferred",
    }
    assert rows["us_west"].error == "retracted_keys_absent: retracted_keys_absent detail"
    assert rows["europe"].error == "WarehouseLoadError: boom"
    assert rows["latam"].error == "day not closed"
    assert all(e.batch_id == BATCH and e.flow_run_id == "flow-1" for e in rows.values())
    assert {e.status for e in rows.values()} <= set(LEDGER_STATUSES)


def test_a_batch_level_check_fails_every_merged_region_and_a_failed_gate_is_named():
    summary = _summary("us_east", "europe")
    merge = SimpleNamespace(inserted=1, updated=0, unchanged=0, deleted=0, seconds=0.1)
    summary.record_load({"us_east": merge, "europe": merge}, {}, [_check("fact_unique_keys", "*")])
    assert {r: o.status for r, o in summary.regions.items()} == dict.fromkeys(
        ["us_east", "europe"], "verify_failed"
    )

    gated = _summary("us_east")
    gated.regions["us_east"].status = "transformed"
    failing = CheckResult.judged("min_rows_region", "us_east", 5, 100, False, "5 rows")
    gated.record_gate(SimpleNamespace(verdict="fail", failing=[failing]))
    (row,) = gated.ledger_entries()
    assert row.status == "gate_failed"
    assert row.error == "quality gate failed: us_east/min_rows_region = 5 vs threshold 100"


def test_load_transactions_group_small_regions_and_keep_large_ones_alone():
    from datetime import date

    from retail_etl.records import RegionLoad, transaction_groups
    from retail_etl.staging import StagedFile

    def load(region: str, rows: int) -> RegionLoad:
        staged = (StagedFile(key=f"{region}.parquet", rows=rows, bytes=0),)
        return RegionLoad(region, date(2024, 1, 15), "20240115T000000Z_abc", staged)

    loads = [load("a", 400), load("b", 500), load("c", 200), load("d", 1_500), load("e", 10)]
    groups = [[x.region for x in g] for g in transaction_groups(loads, 1_000)]
    assert groups == [["a", "b"], ["c"], ["d"], ["e"]]  # in order, none above 1,000 but d
    assert [[x.region for x in g] for g in transaction_groups(loads, 10_000)] == [
        ["a", "b", "c", "d", "e"]
    ]
