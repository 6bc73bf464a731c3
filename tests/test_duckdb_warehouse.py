"""DuckDB warehouse against a real DuckDB file: merge semantics, idempotence, atomicity."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from retail_etl.settings import InvalidIdentifierError
from retail_etl.staging import LocalStagingStore, S3StagingStore, StagingStore
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import (
    LedgerEntry,
    RegionLoad,
    TransformCounts,
    WarehouseLoadError,
)
from retail_etl.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests.test_staging import (
    accepted_table,
    reject_table,
    retraction_table,
    s3_bucket_block,
    start_moto,
    write_parquet,
)
from tests.warehouse_checks import check_fingerprints_and_day_stats

DAY = dt.date(2024, 1, 15)
B1 = "20240115_00000000000a"
B2 = "20240115_00000000000b"
ACCEPTED = list(sql.ACCEPTED)


class Loader:
    """Stage a table for one region and build the RegionLoad the lead's subflow would pass."""

    def __init__(self, tmp_path: Path, store: StagingStore):
        self.tmp_path = tmp_path
        self.store = store
        self.n = 0

    def stage(
        self,
        table: pa.Table,
        region: str,
        batch_id: str,
        day: dt.date = DAY,
        table_name: str = "sales",
        target_file_rows: int | None = None,
    ) -> RegionLoad:
        self.n += 1
        src = write_parquet(self.tmp_path / "transform" / f"{self.n}.parquet", table)
        files = self.store.stage_dataset(
            table_name,
            day,
            region,
            batch_id,
            [src],  # type: ignore[arg-type]
            target_file_rows=target_file_rows,
        )
        return RegionLoad(
            region=region,
            business_date=day,
            batch_id=batch_id,
            files=tuple(files),
            flow_run_id="flow-1",
            rows_extracted=table.num_rows + 1,
            rows_accepted=table.num_rows,
            rows_rejected=1,
        )

    def stage_day(
        self,
        sales: pa.Table,
        region: str,
        batch_id: str,
        *,
        rejects: pa.Table | None = None,
        retractions: pa.Table | None = None,
    ) -> RegionLoad:
        """A region's whole day as the load subflow passes it: accepted rows, rejects and
        retractions, with the transform's counts."""
        batch = self.stage(sales, region, batch_id)
        extra: dict[str, Any] = {"rows_rejected": 0, "rows_retracted": 0}
        for name, table in (("rejects", rejects), ("retractions", retractions)):
            if table is not None:
                staged = self.stage(table, region, batch_id, table_name=name)
                key = "reject_files" if name == "rejects" else "retraction_files"
                extra[key] = staged.files
                extra["rows_rejected" if name == "rejects" else "rows_retracted"] = table.num_rows
        n = sales.num_rows + extra["rows_rejected"] + extra["rows_retracted"]
        return dataclasses.replace(batch, rows_extracted=n, **extra)


@pytest.fixture
def store(tmp_path: Path) -> LocalStagingStore:
    return LocalStagingStore(tmp_path / "staging")


@pytest.fixture
def wh(tmp_path: Path, store: LocalStagingStore) -> DuckDBWarehouse:
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", store, memory_limit="256MB", threads=1)
    warehouse.ensure_schema()
    return warehouse


@pytest.fixture
def loader(tmp_path: Path, store: LocalStagingStore) -> Loader:
    return Loader(tmp_path, store)


def fact(wh: DuckDBWarehouse, region: str | None = None) -> list[dict[str, Any]]:
    return wh.fact_rows(region=region)


def accepted_view(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ACCEPTED} for r in rows]


def expected_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r["region"], r["sale_id"]))


def ledger_statuses(wh: DuckDBWarehouse, batch_id: str) -> list[str]:
    return [r["status"] for r in wh.ledger() if r["batch_id"] == batch_id]


# --------------------------------------------------------------------------- loads


def test_load_batch_equals_input(wh: DuckDBWarehouse, loader: Loader) -> None:
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    batch = loader.stage(table, "us_east", B1, target_file_rows=3)  # 4 staged files
    assert len(batch.files) == 4

    result = wh.load_region(batch)

    assert (result.staged_rows, result.inserted, result.updated, result.unchanged) == (10, 10, 0, 0)
    rows = fact(wh)
    assert accepted_view(rows) == expected_rows(table)
    assert all(r["loaded_at"] == r["updated_in_warehouse_at"] is not None for r in rows)
    (entry,) = wh.ledger()
    assert entry["status"] == "loaded"
    assert (entry["rows_extracted"], entry["rows_accepted"], entry["rows_rejected"]) == (11, 10, 1)
    assert (entry["rows_inserted"], entry["rows_updated"], entry["rows_unchanged"]) == (10, 0, 0)
    assert entry["flow_run_id"] == "flow-1" and entry["load_seconds"] > 0
    assert all(c.passed for c in wh.verify(B1, DAY, [result])), wh.verify(B1, DAY, [result])
    # the per-batch stage table was connection-local: nothing left behind
    tables = {r[0] for r in wh.query("SELECT table_name FROM information_schema.tables")}
    assert tables == {
        "sales_fact",
        "sales_rejects",
        "sales_retractions",
        "dq_results",
        "etl_load_ledger",
        "source_schema_history",
    }


def test_a_session_loads_regions_on_one_connection_and_checkpoints_once(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    east = loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    east_rejects = loader.stage(
        reject_table("us_east", DAY, [7, 8], batch_id=B1), "us_east", B1, table_name="rejects"
    )
    broken = loader.stage(accepted_table("europe", DAY, range(1, 4), batch_id=B1), "europe", B1)
    path = wh.store.local_path(broken.files[0].key)
    assert path is not None
    path.write_bytes(b"not parquet")
    apac = loader.stage(accepted_table("apac", DAY, range(1, 4), batch_id=B1), "apac", B1)
    wal = Path(f"{wh.path}.wal")

    east = dataclasses.replace(east, reject_files=east_rejects.files)
    with wh.session() as session:
        loaded = session.load_region(east)
        assert (loaded.inserted, loaded.rejects) == (5, 2)
        with pytest.raises(WarehouseLoadError, match=r"'europe'.*step 'read staged files'"):
            session.load_region(broken)
        with session.session():  # nested: the same connection
            assert session.load_region(apac).inserted == 3
        # one connection throughout: the stage tables were dropped, and the committed loads
        # wait in the write-ahead log for the single checkpoint at the end
        temp = session.query("SELECT table_name FROM duckdb_tables() WHERE temporary")
        assert temp == []
        assert wal.exists() and wal.stat().st_size > 0

    assert not wal.exists() or wal.stat().st_size == 0
    with duckdb.connect(str(wh.path), read_only=True) as con:  # another connection sees it all
        assert con.execute(
            "SELECT region, count(*) FROM sales_fact GROUP BY region ORDER BY region"
        ).fetchall() == [("apac", 3), ("us_east", 5)]
        assert con.execute("SELECT count(*) FROM sales_rejects").fetchall() == [(2,)]
    assert sorted((e["region"], e["status"]) for e in wh.ledger()) == [
        ("apac", "loaded"),
        ("us_east", "loaded"),
    ]


def test_rerun_same_batch_three_times_is_idempotent(wh: DuckDBWarehouse, loader: Loader) -> None:
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 21), batch_id=B1), "us_east", B1)
    wh.load_region(batch)
    before = fact(wh)

    for _ in range(3):
        again = wh.load_region(batch)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)

    assert fact(wh) == before  # including loaded_at / updated_in_warehouse_at
    assert ledger_statuses(wh, B1) == ["loaded"] * 4
    assert [r["rows_unchanged"] for r in wh.ledger()] == [0, 20, 20, 20]


def test_late_data_updates_only_newer_versions(wh: DuckDBWarehouse, loader: Loader) -> None:
    t0 = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)
    wh.load_region(
        loader.stage(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1, updated_at=t0), "us_east", B1
        )
    )
    first = {r["sale_id"]: r for r in fact(wh)}

    late = pa.concat_tables(
        [
            # newer versions of 6..8 with a new price
            accepted_table(
                "us_east",
                DAY,
                [6, 7, 8],
                batch_id=B2,
                updated_at=t0 + dt.timedelta(hours=1),
                price="12.00",
            ),
            # same version of 1..4, 9 (a re-extract of the whole day): unchanged
            accepted_table("us_east", DAY, [1, 2, 3, 4, 9], batch_id=B2, updated_at=t0),
            # a correction of 10 that kept its updated_at: the content differs, so it lands
            accepted_table("us_east", DAY, [10], batch_id=B2, updated_at=t0, price="99.00"),
            # an OLDER version of 5 must not overwrite the stored one
            accepted_table(
                "us_east",
                DAY,
                [5],
                batch_id=B2,
                updated_at=t0 - dt.timedelta(hours=1),
                price="1.00",
            ),
            # new rows
            accepted_table("us_east", DAY, range(11, 16), batch_id=B2, updated_at=t0),
        ]
    )
    result = wh.load_region(loader.stage(late, "us_east", B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (5, 4, 6, 0)
    rows = {r["sale_id"]: r for r in fact(wh)}
    assert sorted(rows) == list(range(1, 16))  # no duplicate keys, nothing lost
    assert str(rows[10]["unit_price"]) == "99.00" and rows[10]["batch_id"] == B2
    for sid in (6, 7, 8):
        assert str(rows[sid]["unit_price"]) == "12.00"
        assert rows[sid]["batch_id"] == B2
        assert rows[sid]["updated_at"] == t0 + dt.timedelta(hours=1)
        assert rows[sid]["loaded_at"] == first[sid]["loaded_at"]
        assert rows[sid]["updated_in_warehouse_at"] > first[sid]["updated_in_warehouse_at"]
    for sid in (1, 2, 3, 4, 5, 9):
        assert rows[sid] == first[sid]
    assert all(rows[sid]["batch_id"] == B2 for sid in range(11, 16))
    checks = wh.verify(B2, DAY, [result])
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_stored_null_updated_at_loses_to_a_value(wh: DuckDBWarehouse, loader: Loader) -> None:
    base = accepted_table("us_east", DAY, [1, 2], batch_id=B1)
    nulls = base.set_column(
        base.schema.get_field_index("updated_at"),
        "updated_at",
        pa.nulls(2, base.schema.field("updated_at").type),
    )
    wh.load_region(loader.stage(nulls, "us_east", B1))
    again = wh.load_region(loader.stage(nulls, "us_east", B1))
    assert (again.updated, again.unchanged) == (0, 2)  # NULL vs NULL: not newer
    result = wh.load_region(
        loader.stage(accepted_table("us_east", DAY, [1], batch_id=B2), "us_east", B2)
    )
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 0)


def test_duplicates_inside_a_batch_are_deduplicated_and_reported(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    t0 = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)
    table = pa.concat_tables(
        [
            accepted_table("us_east", DAY, [1, 2, 3], batch_id=B1, updated_at=t0),
            accepted_table(
                "us_east",
                DAY,
                [2],
                batch_id=B1,
                updated_at=t0 + dt.timedelta(hours=2),
                price="20.00",
            ),
        ]
    )
    result = wh.load_region(loader.stage(table, "us_east", B1))

    assert (result.staged_rows, result.duplicate_rows, result.inserted) == (4, 1, 3)
    rows = {r["sale_id"]: r for r in fact(wh)}
    assert sorted(rows) == [1, 2, 3]
    assert str(rows[2]["unit_price"]) == "20.00"  # the latest version won
    failed = {c.name for c in wh.verify(B1, DAY, [result]) if not c.passed}
    assert failed == {"merge_reconciles", "batch_duplicate_keys"}


def test_partial_reprocessing_leaves_other_regions_untouched(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    wh.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 11), batch_id=B1), "us_east", B1)
    )
    wh.load_region(
        loader.stage(accepted_table("europe", DAY, range(1, 11), batch_id=B1), "europe", B1)
    )
    europe_before = fact(wh, "europe")

    t1 = dt.datetime(2024, 1, 16, 3, tzinfo=dt.UTC)
    result = wh.load_region(
        loader.stage(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B2, updated_at=t1, price="11.00"),
            "us_east",
            B2,
        )
    )

    assert (result.updated, result.inserted) == (10, 0)
    assert fact(wh, "europe") == europe_before
    assert {str(r["unit_price"]) for r in fact(wh, "us_east")} == {"11.00"}


def test_failure_between_merge_and_commit_rolls_back_everything(
    wh: DuckDBWarehouse, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    )
    before = fact(wh)
    t1 = dt.datetime(2024, 1, 16, tzinfo=dt.UTC)
    batch = loader.stage(
        accepted_table("us_east", DAY, range(1, 11), batch_id=B2, updated_at=t1, price="50.00"),
        "us_east",
        B2,
    )

    # the MERGE runs, then writing the ledger row fails: the transaction must undo the MERGE
    monkeypatch.setattr(
        sql, "insert_ledger_sql", lambda t: 'INSERT INTO "no_such_ledger" VALUES (?)'
    )
    with pytest.raises(
        WarehouseLoadError, match=r"'us_east' for 2024-01-15 \(batch " + B2 + r"\).*step 'ledger'"
    ) as info:
        wh.load_region(batch)
    assert (info.value.region, info.value.business_date, info.value.batch_id) == (
        "us_east",
        DAY,
        B2,
    )
    assert isinstance(info.value.__cause__, duckdb.Error)
    monkeypatch.undo()

    assert fact(wh) == before
    assert ledger_statuses(wh, B2) == []
    wh.record_ledger(LedgerEntry(B2, "us_east", DAY, "load_failed", error=str(info.value)))
    assert ledger_statuses(wh, B2) == ["load_failed"]
    # the latest ledger row of the day is now the failure: backfill --missing-only reruns it
    assert wh.loaded_pairs(DAY, DAY) == set()

    result = wh.load_region(batch)  # rerun completes exactly once
    assert (result.inserted, result.updated, result.unchanged) == (5, 5, 0)
    assert ledger_statuses(wh, B2) == ["load_failed", "loaded"]
    assert len(fact(wh)) == 10
    assert wh.loaded_pairs(DAY, DAY) == {("us_east", DAY)}


def test_bad_stage_fails_before_merging(wh: DuckDBWarehouse, loader: Loader) -> None:
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    # the staged file disappears (or is corrupted) between staging and loading
    path = wh.store.local_path(batch.files[0].key)
    assert path is not None
    path.write_bytes(b"not parquet")
    with pytest.raises(WarehouseLoadError, match="step 'read staged files'"):
        wh.load_region(batch)
    assert fact(wh) == [] and wh.ledger() == []

    # files of another region under this region's name: refused, nothing merged
    europe = loader.stage(accepted_table("europe", DAY, [1], batch_id=B1), "europe", B1)
    mislabelled = RegionLoad("us_east", DAY, B1, europe.files)
    with pytest.raises(WarehouseLoadError, match="not of region 'us_east'"):
        wh.load_region(mislabelled)
    assert fact(wh) == []


def test_history_and_loaded_pairs(wh: DuckDBWarehouse) -> None:
    def at(day: int, minute: int) -> dt.datetime:
        return dt.datetime(2024, 1, 20, 0, minute, tzinfo=dt.UTC) + dt.timedelta(days=day)

    d = [DAY + dt.timedelta(days=i) for i in range(5)]  # 15..19
    for entry in [
        LedgerEntry("b1", "us_east", d[0], "loaded", rows_accepted=100, finished_at=at(0, 1)),
        LedgerEntry("b2", "us_east", d[0], "loaded", rows_accepted=120, finished_at=at(0, 2)),
        LedgerEntry("b3", "us_east", d[1], "loaded", rows_accepted=90, finished_at=at(1, 1)),
        LedgerEntry("b3", "us_east", d[1], "verify_failed", finished_at=at(1, 2)),
        LedgerEntry("b4", "us_east", d[2], "load_failed", finished_at=at(2, 1)),
        LedgerEntry("b5", "us_east", d[3], "gate_failed", finished_at=at(3, 1)),
        LedgerEntry("b5", "europe", d[3], "loaded", rows_accepted=7, finished_at=at(3, 1)),
        LedgerEntry("b6", "us_east", d[4], "loaded", rows_accepted=130, finished_at=at(4, 1)),
    ]:
        wh.record_ledger(entry)

    assert wh.accepted_history("us_east", d[4], 28) == [(d[0], 120), (d[1], 90)]
    assert wh.accepted_history("us_east", d[4], 3) == [(d[1], 90)]
    assert wh.accepted_history("europe", d[4], 28) == [(d[3], 7)]
    assert wh.loaded_pairs(d[0], d[4]) == {("us_east", d[0]), ("europe", d[3]), ("us_east", d[4])}
    assert wh.loaded_pairs(d[1], d[3]) == {("europe", d[3])}
    assert [r["batch_id"] for r in wh.ledger(d[1])] == ["b3", "b3"]
    with pytest.raises(ValueError, match="ledger status"):
        wh.record_ledger(LedgerEntry("b", "us_east", DAY, "done"))  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifierError):
        wh.accepted_history("us_east; drop table x", DAY, 3)


def test_ensure_schema_adds_missing_columns_without_losing_rows(
    tmp_path: Path, store: LocalStagingStore
) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # an older sales_fact without two columns
        con.execute(
            "CREATE TABLE sales_fact (region VARCHAR, sale_id BIGINT, sale_date DATE, "
            "updated_at TIMESTAMPTZ, unit_price DECIMAL(10,2))"
        )
        con.execute(
            "INSERT INTO sales_fact VALUES ('us_east', 1, DATE '2024-01-01', NULL, 2.50),"
            " ('us_east', 2, DATE '2024-01-01', NULL, 3.50)"
        )
    wh = DuckDBWarehouse(path, store)

    added = wh.ensure_schema()

    assert "sales_fact.effective_discount_rate" in added and "sales_fact.extras" in added
    assert not any(a.startswith("sales_fact.sale_id") for a in added)
    rows = wh.fact_rows()
    assert [(r["sale_id"], str(r["unit_price"]), r["extras"]) for r in rows] == [
        (1, "2.50", None),
        (2, "3.50", None),
    ]
    nullable = wh.query(
        "SELECT DISTINCT is_nullable FROM information_schema.columns WHERE table_name = ?",
        ["sales_fact"],
    )
    assert nullable == [("YES",)]
    assert wh.ensure_schema() == []


def test_verify_passes_on_good_loads_and_fails_on_planted_rows(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    east = wh.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    )
    apac = wh.load_region(
        loader.stage(accepted_table("apac", DAY, range(1, 4), batch_id=B1), "apac", B1)
    )
    counts = {"us_east": TransformCounts(6, 5, 1), "apac": TransformCounts(4, 3, 1)}
    checks = wh.verify(B1, DAY, [east, apac], transform_counts=counts)
    assert all(c.passed for c in checks)
    assert {c.name for c in checks} == {
        "merge_reconciles",
        "batch_duplicate_keys",
        "staged_equals_accepted",
        "extracted_equals_accepted_rejected_retracted",
        "fact_unique_keys",
        "loaded_rows_in_batch_dates",
        "ledger_recorded",
        "retracted_keys_absent",
    }

    with duckdb.connect(str(wh.path)) as con:  # plant duplicate keys and a wrong date
        con.execute(
            "INSERT INTO sales_fact SELECT * FROM sales_fact WHERE sale_id = 1 "
            "AND region = 'us_east'"
        )
        # a second copy of a day's sale under another date is found too
        con.execute(
            "INSERT INTO sales_fact SELECT * REPLACE (DATE '2023-12-31' AS sale_date, "
            "'by hand' AS batch_id) "
            "FROM sales_fact WHERE sale_id = 3 AND region = 'us_east'"
        )
        # a key stored twice on another day only is not this day's business
        con.execute(
            "INSERT INTO sales_fact SELECT * REPLACE (DATE '2023-12-30' AS sale_date, "
            "'by hand' AS batch_id) "
            "FROM sales_fact WHERE sale_id = 4 AND region = 'us_east'"
        )
        con.execute("UPDATE sales_fact SET sale_id = 99 WHERE sale_date = DATE '2023-12-30'")
        con.execute("INSERT INTO sales_fact SELECT * FROM sales_fact WHERE sale_id = 99")
        con.execute(
            "UPDATE sales_fact SET sale_date = DATE '2024-01-14' WHERE region = 'apac' "
            "AND sale_id = 2"
        )
    bad = {
        (c.name, c.region): c
        for c in wh.verify(
            B1, DAY, [east, apac], transform_counts={"us_east": TransformCounts(7, 5, 1)}
        )
        if not c.passed
    }
    assert set(bad) == {
        ("fact_unique_keys", "*"),
        ("loaded_rows_in_batch_dates", "*"),
        ("extracted_equals_accepted_rejected_retracted", "us_east"),
    }
    assert bad[("fact_unique_keys", "*")].measured == 2
    assert bad[("loaded_rows_in_batch_dates", "*")].measured == 1
    record = bad[("fact_unique_keys", "*")].to_dq_record(B1, DAY, "flow-1")
    assert record["status"] == "fail" and wh.load_dq_results([record]) == 1


def test_rejects_and_dq_results_are_replaced_on_rerun(wh: DuckDBWarehouse, loader: Loader) -> None:
    def day(region: str, batch: str, rejected: list[int | None]) -> RegionLoad:
        return loader.stage_day(
            accepted_table(region, DAY, [20, 21], batch_id=batch),
            region,
            batch,
            rejects=reject_table(region, DAY, rejected, batch_id=batch),
        )

    assert wh.load_region(day("us_east", B1, [1, None, 3])).rejects == 3
    assert wh.load_region(day("europe", B1, [9])).rejects == 1
    assert wh.load_region(day("us_east", B2, [3])).rejects == 1
    rows = wh.query("SELECT region, sale_id, batch_id FROM sales_rejects ORDER BY region")
    assert rows == [("europe", 9, B1), ("us_east", 3, B2)]

    def record(batch: str, name: str, status: str) -> dict[str, Any]:
        return {
            "batch_id": batch,
            "business_date": DAY,
            "region": "*",
            "check_name": name,
            "measured": 1,
            "threshold": 0,
            "status": status,
            "detail": "",
            "flow_run_id": "f",
        }

    wh.load_dq_results([record(B1, "a", "pass"), record(B1, "b", "fail")])
    wh.load_dq_results([record(B2, "a", "warn")])
    wh.load_dq_results([record(B1, "a", "pass")])  # rerun of B1 replaces B1's results only
    assert wh.query("SELECT batch_id, check_name, status FROM dq_results ORDER BY 1, 2") == [
        (B1, "a", "pass"),
        (B2, "a", "warn"),
    ]
    with pytest.raises(ValueError, match="status 'ok'"):
        wh.load_dq_results([record(B1, "a", "ok")])


def test_concurrent_loads_of_two_dates_do_not_collide(wh: DuckDBWarehouse, loader: Loader) -> None:
    day2 = DAY + dt.timedelta(days=1)
    b_day2 = "20240116_00000000000c"
    batches = [
        loader.stage(accepted_table("us_east", DAY, range(1, 200), batch_id=B1), "us_east", B1),
        loader.stage(
            accepted_table("us_east", day2, range(1000, 1200), batch_id=b_day2),
            "us_east",
            b_day2,
            day=day2,
        ),
    ]
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda b=b: results.append(wh.load_region(b))) for b in batches
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.inserted for r in results) == [199, 200]
    assert len(fact(wh)) == 399
    assert wh.loaded_pairs(DAY, day2) == {("us_east", DAY), ("us_east", day2)}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.mark.integration
def test_loads_from_the_s3_staging_store(tmp_path: Path, moto_endpoint: str) -> None:
    store = S3StagingStore.from_block(
        s3_bucket_block(moto_endpoint, "retail-staging-d"), scratch_dir=tmp_path / "scratch"
    )
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb", store)
    wh.ensure_schema()
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    batch = Loader(tmp_path, store).stage(table, "us_east", B1, target_file_rows=4)

    result = wh.load_region(batch)

    assert (result.staged_rows, result.inserted) == (10, 10)
    assert accepted_view(fact(wh)) == expected_rows(table)


# --------------------------------------------------------------------------- schema changes


def test_extras_json_reaches_sales_fact_and_can_be_parsed(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    table = accepted_table("us_east", DAY, range(1, 5), batch_id=B1)  # odd ids carry extras
    wh.load_region(loader.stage(table, "us_east", B1))

    rows = wh.query(
        "SELECT sale_id, json_extract_string(extras, '$.loyalty_tier') FROM sales_fact "
        "ORDER BY sale_id"
    )
    assert rows == [(1, "gold1"), (2, None), (3, "gold3"), (4, None)]


def test_a_contract_column_added_by_a_new_release_is_added_nullable_keeping_rows(
    wh: DuckDBWarehouse, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retail_etl.warehouse import base

    wh.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    )
    before = wh.query("SELECT sale_id, loaded_at FROM sales_fact ORDER BY sale_id")
    # The next release's contract has one more fact column.
    channel = base.WarehouseColumn("sales_channel", "VARCHAR", "VARCHAR")
    monkeypatch.setitem(base.TABLES, base.SALES_FACT, (*base.SALES_FACT_COLUMNS, channel))

    assert wh.ensure_schema() == ["sales_fact.sales_channel"]

    info = wh.query(
        "SELECT data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'sales_fact' AND column_name = 'sales_channel'"
    )
    assert info == [("VARCHAR", "YES")]
    assert wh.query("SELECT sale_id, loaded_at FROM sales_fact ORDER BY sale_id") == before
    assert wh.query("SELECT count(*) FROM sales_fact WHERE sales_channel IS NULL") == [(3,)]
    # Loads keep working on the wider table; the new column stays NULL until it is fed.
    result = wh.load_region(
        loader.stage(accepted_table("us_east", DAY, range(4, 6), batch_id=B2), "us_east", B2)
    )
    assert result.inserted == 2
    assert wh.ensure_schema() == []


def test_schema_history_records_each_fingerprint_change_once(wh: DuckDBWarehouse) -> None:
    columns = {"sale_id": "bigint", "channel": "text"}

    assert wh.latest_schema("us_east") is None
    assert wh.record_schema("us_east", "fp1", columns, "new column channel (text)", B1, "f1")
    assert not wh.record_schema("us_east", "fp1", columns, "new column channel (text)", B2, "f2")
    assert wh.record_schema("europe", "fp1", columns, "new column channel (text)", B2, "f2")
    assert wh.latest_schema("us_east") == "fp1"
    assert wh.record_schema(
        "us_east", "fp2", {"sale_id": "bigint"}, "matches the contract", B2, None
    )
    assert wh.latest_schema("us_east") == "fp2"

    history = wh.schema_history("us_east")
    assert [(h["fingerprint"], h["first_seen_batch_id"], h["flow_run_id"]) for h in history] == [
        ("fp1", B1, "f1"),
        ("fp2", B2, None),
    ]
    assert json.loads(history[0]["columns"]) == columns
    assert history[0]["differences"] == "new column channel (text)"
    assert history[0]["first_seen_at"] <= history[1]["first_seen_at"]
    with pytest.raises(InvalidIdentifierError):
        wh.record_schema("us_east; drop table x", "fp3", columns, "", B1, None)


def test_fingerprints_in_the_ledger_and_fact_day_stats(wh: DuckDBWarehouse, loader: Loader) -> None:
    table = accepted_table("us_east", DAY, range(1, 6), batch_id=B1)
    amount = sum(table.column("total_amount").to_pylist())
    check_fingerprints_and_day_stats(wh, loader.stage(table, "us_east", B1), amount)


# --------------------------------------------------------------------------- retractions


def _day_with_changes(loader: Loader, batch_id: str) -> RegionLoad:
    """The source's day after a first load of 1..10: 1..6 unchanged, 7 refunded, 8 deleted,
    9 hard-deleted (absent), 10 now rejected (its stored version leaves the fact too)."""
    return loader.stage_day(
        accepted_table("us_east", DAY, range(1, 7), batch_id=batch_id),
        "us_east",
        batch_id,
        rejects=reject_table("us_east", DAY, [10], batch_id=batch_id),
        retractions=pa.concat_tables(
            [
                retraction_table("us_east", DAY, [7], batch_id=batch_id),
                retraction_table("us_east", DAY, [8], reason="deleted", batch_id=batch_id),
            ]
        ),
    )


def test_retractions_leave_the_fact_are_kept_and_a_rerun_changes_nothing(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    first = wh.load_region(
        loader.stage_day(accepted_table("us_east", DAY, range(1, 11), batch_id=B1), "us_east", B1)
    )
    europe = wh.load_region(
        loader.stage_day(accepted_table("europe", DAY, [7, 8, 9], batch_id=B1), "europe", B1)
    )
    stored = {r["sale_id"]: r for r in fact(wh, "us_east")}

    result = wh.load_region(_day_with_changes(loader, B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (0, 0, 6, 4)
    assert sorted(r["sale_id"] for r in fact(wh, "us_east")) == [1, 2, 3, 4, 5, 6]
    assert len(fact(wh, "europe")) == 3  # the same sale ids in another region stay
    retracted = {r["sale_id"]: r for r in wh.retractions("us_east")}
    assert {k: r["reason"] for k, r in retracted.items()} == {
        7: "status_refunded",
        8: "deleted",
        9: "missing_from_source",
        10: "latest_version_rejected",
    }
    for sale_id, row in retracted.items():
        as_was = json.loads(row["row_values"])
        assert as_was["sale_id"] == sale_id and as_was["batch_id"] == B1
        assert as_was["unit_price"] == float(stored[sale_id]["unit_price"])
        assert (row["batch_id"], row["sale_date"], row["region"]) == (B2, DAY, "us_east")
    assert json.loads(retracted[7]["source_values"])["status"] == "refunded"
    assert retracted[9]["source_values"] is None
    assert json.loads(retracted[10]["source_values"]) == {"customer_id": None}  # its reject
    (entry,) = [e for e in wh.ledger() if e["batch_id"] == B2]
    assert (entry["rows_extracted"], entry["rows_accepted"]) == (9, 6)
    assert (entry["rows_rejected"], entry["rows_retracted"], entry["rows_deleted"]) == (1, 2, 4)
    counts = {"us_east": TransformCounts(9, 6, 1, 2)}
    checks = wh.verify(B2, DAY, [result], transform_counts=counts)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert first.deleted == europe.deleted == 0

    before = (fact(wh), wh.retractions())
    for batch_id in (B2, "20240115_00000000000c"):  # the same batch again, then a new one
        again = wh.load_region(_day_with_changes(loader, batch_id))
        assert (again.inserted, again.updated, again.unchanged, again.deleted) == (0, 0, 6, 0)
        assert (fact(wh), wh.retractions()) == before
        checks = wh.verify(batch_id, DAY, [again], transform_counts=counts)
        assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_a_key_retracted_on_its_first_load_never_reaches_the_fact(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    result = wh.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, [1], batch_id=B1),
            "us_east",
            B1,
            retractions=retraction_table("us_east", DAY, [42], batch_id=B1),
        )
    )
    assert (result.inserted, result.deleted) == (1, 0)
    assert [r["sale_id"] for r in fact(wh)] == [1]
    assert wh.retractions() == []  # nothing left the fact
    assert wh.ledger()[0]["rows_retracted"] == 1


def test_a_retracted_key_stored_under_another_date_is_removed(
    wh: DuckDBWarehouse, loader: Loader
) -> None:
    """A sale that moved to this day in the source and was then refunded: its key is
    retracted wherever it is stored."""
    other = DAY - dt.timedelta(days=1)
    wh.load_region(
        loader.stage_day(accepted_table("us_east", other, [5, 6], batch_id=B1), "us_east", B1)
    )
    result = wh.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, [1], batch_id=B2),
            "us_east",
            B2,
            retractions=retraction_table("us_east", DAY, [5], batch_id=B2),
        )
    )
    assert result.deleted == 1
    assert sorted((r["sale_id"], r["sale_date"]) for r in fact(wh)) == [(1, DAY), (6, other)]
    ((sale_date, reason),) = [(r["sale_date"], r["reason"]) for r in wh.retractions()]
    assert (sale_date, reason) == (other, "status_refunded")


def test_a_failure_after_the_merge_rolls_back_retractions_and_rejects(
    wh: DuckDBWarehouse, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1),
            "us_east",
            B1,
            rejects=reject_table("us_east", DAY, [11], batch_id=B1),
        )
    )
    before = (fact(wh), wh.query("SELECT sale_id, batch_id FROM sales_rejects"), wh.ledger())

    # the rejects file of the rerun is unreadable: the MERGE already ran, so it must be undone
    broken = _day_with_changes(loader, B2)
    path = wh.store.local_path(broken.reject_files[0].key)
    assert path is not None
    path.write_bytes(b"not parquet")
    with pytest.raises(WarehouseLoadError, match="step 'stage rejects and retractions'"):
        wh.load_region(broken)
    # the ledger row cannot be written after the retractions ran: all of it is undone
    monkeypatch.setattr(
        sql, "insert_ledger_sql", lambda t: 'INSERT INTO "no_such_ledger" VALUES (?)'
    )
    with pytest.raises(WarehouseLoadError, match="step 'ledger'"):
        wh.load_region(_day_with_changes(loader, B2))
    monkeypatch.undo()

    after = (fact(wh), wh.query("SELECT sale_id, batch_id FROM sales_rejects"), wh.ledger())
    assert after == before and wh.retractions() == []
    assert wh.load_region(_day_with_changes(loader, B2)).deleted == 4  # the rerun lands once
    assert wh.query("SELECT sale_id, batch_id FROM sales_rejects") == [(10, B2)]


@pytest.mark.parametrize("kind", ["sales", "rejects", "retractions"])
def test_stage_table_names_fit_for_the_longest_allowed_region(kind: str) -> None:
    from retail_etl.settings import MAX_REGION_LENGTH

    region = "r" * MAX_REGION_LENGTH
    name = sql.stage_table_name(kind, "20240115_0123456789ab", region)  # type: ignore[arg-type]
    assert len(name) <= 63 and name.endswith(region)
