"""The warehouse on every engine: DuckDB (a real file) and Snowflake (fakesnow, DuckDB
underneath, staging from a ``file://`` stage). Every behaviour test runs on both through the
``warehouse`` fixture; engine-only tests say so in their name and marker.

fakesnow cannot COPY from s3:// offline, so the external stage points at the local staging
root; the COPY statement, FILES list, file format and MATCH_BY_COLUMN_NAME are the production
ones. fakesnow silently double-updates on duplicate MERGE keys where Snowflake raises, so the
dedup guard is also tested on the exact MERGE source query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from retail_etl.backfill import LedgerState
from retail_etl.records import RegionRecord
from retail_etl.settings import InvalidIdentifierError
from retail_etl.staging import LocalStagingStore, S3StagingStore, StagedTable, StagingStore
from retail_etl.warehouse import LoadRetry, Warehouse, sql
from retail_etl.warehouse.base import (
    SALES_FACT_COLUMNS,
    SALES_STAGE_COLUMNS,
    TABLES,
    LedgerEntry,
    RegionLoad,
    WarehouseColumn,
    WarehouseError,
    WarehouseLoadError,
)
from retail_etl.warehouse.dialects.duckdb import DuckDBDialect
from retail_etl.warehouse.dialects.snowflake import (
    SnowflakeConnection,
    SnowflakeDialect,
    SnowflakeLoadOptions,
)
from tests.fake_snowflake import FakeSnowflake
from tests.test_staging import (
    accepted_table,
    reject_table,
    retraction_table,
    write_parquet,
)
from tests.warehouse_faults import FaultPlan, InjectedFault, StatementLog

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DAY = dt.date(2024, 1, 15)
B1 = "20240115_00000000000a"
B2 = "20240115_00000000000b"
ACCEPTED = list(sql.ACCEPTED)
KEY_ID = "AKIAFAKEKEYID0001"
SECRET = "fake-secret-Wk2/x9+Q"
ENGINES = ["duckdb", "snowflake"]
duckdb_only = pytest.mark.parametrize("engine", ["duckdb"])
snowflake_only = pytest.mark.parametrize("engine", ["snowflake"])


class Loader:
    """Stage a table for one region and build the RegionLoad the load subflow would pass."""

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
        table_name: StagedTable = "sales",
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
            record=RegionRecord(
                region,
                rows_extracted=table.num_rows + 1,
                rows_accepted=table.num_rows,
                rows_rejected=1,
            ),
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
        files: dict[str, Any] = {}
        counts = {"rows_rejected": 0, "rows_retracted": 0}
        sides: tuple[tuple[StagedTable, pa.Table | None], ...] = (
            ("rejects", rejects),
            ("retractions", retractions),
        )
        for name, table in sides:
            if table is not None:
                staged = self.stage(table, region, batch_id, table_name=name)
                key = "reject_files" if name == "rejects" else "retraction_files"
                files[key] = staged.files
                counts["rows_rejected" if name == "rejects" else "rows_retracted"] = table.num_rows
        n = sales.num_rows + counts["rows_rejected"] + counts["rows_retracted"]
        record = RegionRecord(region, rows_extracted=n, rows_accepted=sales.num_rows, **counts)
        return dataclasses.replace(batch, record=record, **files)


@pytest.fixture
def fake_snowflake() -> Iterator[FakeSnowflake]:
    """A fresh in-memory fakesnow per test; the connection factory, with its statement log."""
    fakesnow = pytest.importorskip("fakesnow")
    snowflake_connector = pytest.importorskip("snowflake.connector")
    with fakesnow.patch():
        yield FakeSnowflake(
            lambda: snowflake_connector.connect(database="retail_db", schema="public")
        )


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_warehouse(
    engine: str, tmp_path: Path, store: LocalStagingStore, request: pytest.FixtureRequest
) -> Callable[..., Warehouse]:
    """A fresh (schema not yet ensured) warehouse of the engine, over the local store;
    another ``name``: a second one beside it (its own DuckDB file / Snowflake schema)."""

    def make(name: str = "retail") -> Warehouse:
        if engine == "duckdb":
            file = "wh.duckdb" if name == "retail" else f"{name}.duckdb"
            dialect: Any = DuckDBDialect(tmp_path / file, store, memory_limit="256MB", threads=1)
        else:
            connect = request.getfixturevalue("fake_snowflake")
            dialect = SnowflakeDialect(
                SnowflakeConnection(connect, database="retail_db", schema=name), store
            )
        return Warehouse(dialect, store)

    return make


@pytest.fixture
def warehouse(make_warehouse: Callable[..., Warehouse]) -> Warehouse:
    wh = make_warehouse()
    wh.ensure_schema()
    return wh


@pytest.fixture
def loader(tmp_path: Path, store: LocalStagingStore) -> Loader:
    return Loader(tmp_path, store)


# --------------------------------------------------------------------------- helpers


#: What ``Warehouse.verify`` checks after a load of known accepted rows (every ``Loader``
#: batch); ``RECORD_CHECKS`` too when given the regions' records.
POST_LOAD_CHECKS = {
    "merge_reconciles",
    "batch_duplicate_keys",
    "staged_equals_accepted",
    "fact_unique_keys",
    "loaded_rows_in_batch_dates",
    "ledger_recorded",
    "retracted_keys_absent",
}
RECORD_CHECKS = {"extracted_equals_accepted_rejected_retracted"}


def assert_verified(checks: Sequence[Any], *, records: bool = False) -> None:
    """Every post-load check ran (a verify that checked nothing would pass too) and passed."""
    assert {c.name for c in checks} == POST_LOAD_CHECKS | (RECORD_CHECKS if records else set())
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def fact(wh: Warehouse, region: str | None = None) -> list[dict[str, Any]]:
    return wh.fact_rows(region=region)


def _plain(value: Any) -> Any:
    """Snowflake returns NUMBER(p,0) as Decimal: compare as int."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def rows(wh: Warehouse, select: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A query with ``{table}`` placeholders filled with the dialect's qualified names."""
    text = select.format(**{name: wh.dialect.table(name) for name in TABLES})
    return [tuple(_plain(v) for v in r) for r in wh.query(text, params)]


def execute(wh: Warehouse, *statements: tuple[str, Sequence[Any]]) -> None:
    """Write by hand (planting bad rows), committed."""
    with wh.dialect.connect() as con:
        wh.dialect.begin(con)
        for text, params in statements:
            wh.dialect.execute(
                con, "ddl", text.format(**{n: wh.dialect.table(n) for n in TABLES}), params
            )
        wh.dialect.commit(con)


def accepted_view(wh_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in wh_rows:
        view = {k: r[k] for k in ACCEPTED}
        if view["extras"] is not None:  # JSON text (Snowflake: VARIANT as text); compare parsed
            view["extras"] = json.loads(view["extras"])
        out.append(view)
    return out


def expected_rows(table: pa.Table) -> list[dict[str, Any]]:
    out = sorted(table.to_pylist(), key=lambda r: (r["region"], r["sale_id"]))
    for r in out:
        if r["extras"] is not None:
            r["extras"] = json.loads(r["extras"])
    return out


def ledger_statuses(wh: Warehouse, batch_id: str) -> list[str]:
    return [r["status"] for r in wh.ledger() if r["batch_id"] == batch_id]


def stage_tables(wh: Warehouse) -> list[str]:
    """Stage tables left on the session's connection (DuckDB: TEMP; Snowflake: TRANSIENT)."""
    if isinstance(wh.dialect, DuckDBDialect):
        found = wh.query("SELECT table_name FROM duckdb_tables() WHERE temporary")
    else:
        found = wh.query(
            "SELECT table_name FROM retail_db.information_schema.tables "
            "WHERE table_schema = 'RETAIL'"
        )
    return sorted(n for (n,) in found if str(n).lower().startswith("stg_"))


def rejects_of(wh: Warehouse) -> list[tuple[Any, ...]]:
    return rows(
        wh, "SELECT region, sale_id, batch_id FROM {sales_rejects} ORDER BY region, sale_id"
    )


# --------------------------------------------------------------------------- loads


def test_load_batch_equals_input_and_leaves_no_stage_table(
    warehouse: Warehouse, loader: Loader
) -> None:
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    batch = loader.stage(table, "us_east", B1, target_file_rows=3)  # 4 staged files
    assert len(batch.files) == 4

    with warehouse.session():
        result = warehouse.load_region(batch)
        assert stage_tables(warehouse) == []

    assert (result.staged_rows, result.inserted, result.updated, result.unchanged) == (10, 10, 0, 0)
    fact_rows = fact(warehouse)
    assert accepted_view(fact_rows) == expected_rows(table)
    assert all(r["loaded_at"] == r["updated_in_warehouse_at"] is not None for r in fact_rows)
    (entry,) = warehouse.ledger()
    assert entry["status"] == "loaded"
    assert (entry["rows_extracted"], entry["rows_accepted"], entry["rows_rejected"]) == (11, 10, 1)
    assert (entry["rows_inserted"], entry["rows_updated"], entry["rows_unchanged"]) == (10, 0, 0)
    assert entry["flow_run_id"] == "flow-1" and entry["load_seconds"] > 0
    checks = warehouse.verify(B1, DAY, [result])
    assert_verified(checks)


def test_a_session_survives_a_failed_region_and_nests(warehouse: Warehouse, loader: Loader) -> None:
    east = loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    east_rejects = loader.stage(
        reject_table("us_east", DAY, [7, 8], batch_id=B1), "us_east", B1, table_name="rejects"
    )
    broken = loader.stage(accepted_table("europe", DAY, range(1, 4), batch_id=B1), "europe", B1)
    path = warehouse.store.local_path(broken.files[0].key)
    assert path is not None
    path.unlink()
    apac = loader.stage(accepted_table("apac", DAY, range(1, 4), batch_id=B1), "apac", B1)
    fill_step = warehouse.dialect.fill_steps[0]

    east = dataclasses.replace(east, reject_files=east_rejects.files)
    with warehouse.session() as session:
        loaded = session.load_region(east)
        assert (loaded.inserted, loaded.rejects) == (5, 2)
        with pytest.raises(WarehouseLoadError, match=rf"'europe'.*step '{fill_step}'"):
            session.load_region(broken)
        with session.session():  # nested: the same connection
            assert session.load_region(apac).inserted == 3
        again = session.load_region(east)  # the connection is usable after the rollback
        assert (again.inserted, again.unchanged) == (0, 5)
        assert stage_tables(session) == []

    assert rows(
        warehouse, "SELECT region, count(*) FROM {sales_fact} GROUP BY region ORDER BY region"
    ) == [("apac", 3), ("us_east", 5)]
    assert rejects_of(warehouse) == [("us_east", 7, B1), ("us_east", 8, B1)]
    assert sorted((e["region"], e["status"]) for e in warehouse.ledger()) == [
        ("apac", "loaded"),
        ("us_east", "loaded"),
        ("us_east", "loaded"),
    ]


@duckdb_only
def test_duckdb_session_checkpoints_once(warehouse: Warehouse, loader: Loader) -> None:
    import duckdb

    assert isinstance(warehouse.dialect, DuckDBDialect)
    wal = Path(f"{warehouse.dialect.path}.wal")
    with warehouse.session() as session:
        for region in ("us_east", "apac"):
            batch = loader.stage(accepted_table(region, DAY, range(1, 4), batch_id=B1), region, B1)
            session.load_region(batch)
        # the committed loads wait in the write-ahead log for the single checkpoint at the end
        assert wal.exists() and wal.stat().st_size > 0
    assert not wal.exists() or wal.stat().st_size == 0
    with duckdb.connect(str(warehouse.dialect.path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM sales_fact").fetchall() == [(6,)]


@duckdb_only
@pytest.mark.parametrize("nth", [1, 2, 4])  # DESCRIBE, a SET VARIABLE, DROP TABLE
def test_a_fault_while_setting_up_the_duckdb_stage_view_fails_cleanly(
    warehouse: Warehouse, loader: Loader, nth: int
) -> None:
    """Every statement that builds the DuckDB stage view goes through the statement seam: a
    failure in any of them fails the region's load, named, with nothing stored and no stage
    or variable left; the rerun loads it."""
    assert isinstance(warehouse.dialect, DuckDBDialect)
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    plan = FaultPlan("fill_stage", nth=nth)
    plan.apply(warehouse.dialect)
    with pytest.raises(
        WarehouseLoadError, match=r"'us_east' for 2024-01-15.*step 'read staged files'"
    ):
        warehouse.load_region(batch)
    assert plan.failed == 1
    with warehouse.session(), warehouse.dialect.connect() as con:
        left = con.execute(
            "SELECT (SELECT count(*) FROM duckdb_views() WHERE NOT internal "
            "AND view_name LIKE 'stg%'), (SELECT count(*) FROM duckdb_tables() "
            "WHERE table_name LIKE 'stg%'), (SELECT count(*) FROM duckdb_variables())"
        ).fetchall()
    assert left == [(0, 0, 0)]
    assert fact(warehouse) == []
    assert warehouse.load_region(batch).inserted == 3


@duckdb_only
def test_a_duckdb_load_leaves_no_stage_view_table_variable_or_setting_behind(
    warehouse: Warehouse, loader: Loader
) -> None:
    """The stage is a view over the staged files (DuckDB): a batch's regions load from it,
    and no view, table, variable or setting of the load outlives it on the connection."""
    assert isinstance(warehouse.dialect, DuckDBDialect)
    batches = [
        loader.stage(accepted_table(region, DAY, range(1, 4), batch_id=B1), region, B1)
        for region in ("us_east", "apac")
    ]
    with warehouse.session():
        with warehouse.loading():
            merges, failures = warehouse.load_regions(batches)
        with warehouse.dialect.connect() as con:  # the session's own connection
            left = con.execute(
                "SELECT (SELECT count(*) FROM duckdb_views() WHERE NOT internal "
                "AND view_name LIKE 'stg%'), (SELECT count(*) FROM duckdb_tables() "
                "WHERE table_name LIKE 'stg%'), (SELECT count(*) FROM duckdb_variables()), "
                "current_setting('preserve_insertion_order')"
            ).fetchall()
    assert failures == {}
    assert {r: (m.staged_rows, m.inserted) for r, m in merges.items()} == {
        "us_east": (3, 3),
        "apac": (3, 3),
    }
    assert left == [(0, 0, 0, True)]
    assert rows(
        warehouse, "SELECT region, count(*) FROM {sales_fact} GROUP BY region ORDER BY region"
    ) == [("apac", 3), ("us_east", 3)]


@snowflake_only
def test_snowflake_session_logs_in_once(
    fake_snowflake: Callable[[], Any], store: LocalStagingStore, loader: Loader, engine: str
) -> None:
    logins: list[Any] = []

    def connect() -> Any:
        logins.append(fake_snowflake())
        return logins[-1]

    dialect = SnowflakeDialect(SnowflakeConnection(connect, "retail_db", "retail"), store)
    wh = Warehouse(dialect, store)
    wh.ensure_schema()
    batches = [
        loader.stage(accepted_table(region, DAY, range(1, 4), batch_id=B1), region, B1)
        for region in ("us_east", "apac")
    ]
    logins.clear()
    with wh.session():
        for batch in batches:
            wh.load_region(batch)
        assert len(wh.ledger()) == 2
    assert len(logins) == 1


def test_rerun_same_batch_three_times_is_idempotent(warehouse: Warehouse, loader: Loader) -> None:
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 21), batch_id=B1), "us_east", B1)
    warehouse.load_region(batch)
    before = fact(warehouse)

    for _ in range(3):  # same batch, same file names (Snowflake: FORCE makes COPY reload them)
        again = warehouse.load_region(batch)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)

    assert fact(warehouse) == before  # including loaded_at / updated_in_warehouse_at
    assert ledger_statuses(warehouse, B1) == ["loaded"] * 4
    assert [r["rows_unchanged"] for r in warehouse.ledger()] == [0, 20, 20, 20]
    checks = warehouse.verify(B1, DAY, [again])
    assert_verified(checks)


def test_late_data_updates_only_newer_versions(warehouse: Warehouse, loader: Loader) -> None:
    t0 = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)
    warehouse.load_region(
        loader.stage(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1, updated_at=t0), "us_east", B1
        )
    )
    first = {r["sale_id"]: r for r in fact(warehouse)}

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
    result = warehouse.load_region(loader.stage(late, "us_east", B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (5, 4, 6, 0)
    stored = {r["sale_id"]: r for r in fact(warehouse)}
    assert sorted(stored) == list(range(1, 16))  # no duplicate keys, nothing lost
    assert str(stored[10]["unit_price"]) == "99.00" and stored[10]["batch_id"] == B2
    for sid in (6, 7, 8):
        assert str(stored[sid]["unit_price"]) == "12.00"
        assert stored[sid]["batch_id"] == B2
        assert stored[sid]["updated_at"] == t0 + dt.timedelta(hours=1)
        assert stored[sid]["loaded_at"] == first[sid]["loaded_at"]
        assert stored[sid]["updated_in_warehouse_at"] > first[sid]["updated_in_warehouse_at"]
    for sid in (1, 2, 3, 4, 5, 9):
        assert stored[sid] == first[sid]
    assert all(stored[sid]["batch_id"] == B2 for sid in range(11, 16))
    checks = warehouse.verify(B2, DAY, [result])
    assert_verified(checks)


def test_stored_null_updated_at_loses_to_a_value(warehouse: Warehouse, loader: Loader) -> None:
    base = accepted_table("us_east", DAY, [1, 2], batch_id=B1)
    nulls = base.set_column(
        base.schema.get_field_index("updated_at"),
        "updated_at",
        pa.nulls(2, base.schema.field("updated_at").type),
    )
    warehouse.load_region(loader.stage(nulls, "us_east", B1))
    again = warehouse.load_region(loader.stage(nulls, "us_east", B1))
    assert (again.updated, again.unchanged) == (0, 2)  # NULL vs NULL: not newer
    result = warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, [1], batch_id=B2), "us_east", B2)
    )
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 0)


def _batch_with_duplicates(loader: Loader) -> RegionLoad:
    t0 = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)
    table = pa.concat_tables(
        [
            accepted_table("us_east", DAY, [1, 2, 3], batch_id=B1, updated_at=t0),
            accepted_table(
                "us_east",
                DAY,
                [2, 3],
                batch_id=B1,
                updated_at=t0 + dt.timedelta(hours=2),
                price="20.00",
            ),
            accepted_table(
                "us_east",
                DAY,
                [3],
                batch_id=B1,
                updated_at=t0 - dt.timedelta(hours=2),
                price="1.00",
            ),
        ]
    )
    return loader.stage(table, "us_east", B1)


def test_duplicates_inside_a_batch_are_deduplicated_and_reported(
    warehouse: Warehouse, loader: Loader
) -> None:
    result = warehouse.load_region(_batch_with_duplicates(loader))

    assert (result.staged_rows, result.duplicate_rows, result.inserted) == (6, 3, 3)
    assert [(r["sale_id"], str(r["unit_price"])) for r in fact(warehouse)] == [
        (1, "10.00"),
        (2, "20.00"),  # the latest version won
        (3, "20.00"),
    ]
    failed = {c.name for c in warehouse.verify(B1, DAY, [result]) if not c.passed}
    assert failed == {"merge_reconciles", "batch_duplicate_keys"}


@snowflake_only
def test_snowflake_dedup_guard_on_the_exact_merge_source(
    warehouse: Warehouse, loader: Loader, engine: str
) -> None:
    """fakesnow double-updates where Snowflake raises: check the MERGE's source itself."""
    batch = _batch_with_duplicates(loader)
    d = warehouse.dialect
    name = sql.stage_table_name("sales", B1, "us_east")
    with d.connect() as con:  # the stage table exactly as load_region builds it
        d.create_stage_table(con, name, SALES_STAGE_COLUMNS)
        assert d.fill_stage(con, name, ACCEPTED, batch.files) == 6  # duplicates in the stage
        source, _ = d.merge_source(con, name, duplicates=3)
        assert f"USING ({source}) s ON" in sql.merge_sql(d, source)
        dup_keys = d.execute(
            con,
            "read",
            f'SELECT "REGION", "SALE_ID", COUNT(*) FROM ({source}) q '
            'GROUP BY "REGION", "SALE_ID" HAVING COUNT(*) > 1',
        )
        assert dup_keys.rows == []  # Snowflake would not raise ERROR_ON_NONDETERMINISTIC_MERGE
        d.drop_stage_table(con, name)


def test_partial_reprocessing_leaves_other_regions_untouched(
    warehouse: Warehouse, loader: Loader
) -> None:
    warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 11), batch_id=B1), "us_east", B1)
    )
    warehouse.load_region(
        loader.stage(accepted_table("europe", DAY, range(1, 11), batch_id=B1), "europe", B1)
    )
    europe_before = fact(warehouse, "europe")

    t1 = dt.datetime(2024, 1, 16, 3, tzinfo=dt.UTC)
    result = warehouse.load_region(
        loader.stage(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B2, updated_at=t1, price="11.00"),
            "us_east",
            B2,
        )
    )

    assert (result.updated, result.inserted) == (10, 0)
    assert fact(warehouse, "europe") == europe_before
    assert {str(r["unit_price"]) for r in fact(warehouse, "us_east")} == {"11.00"}


def test_failure_between_merge_and_commit_rolls_back_everything(
    warehouse: Warehouse, loader: Loader
) -> None:
    warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    )
    before = fact(warehouse)
    t1 = dt.datetime(2024, 1, 16, tzinfo=dt.UTC)
    batch = loader.stage(
        accepted_table("us_east", DAY, range(1, 11), batch_id=B2, updated_at=t1, price="50.00"),
        "us_east",
        B2,
    )

    # the MERGE runs, then writing the ledger row fails: the transaction must undo the MERGE
    plan = FaultPlan("ledger")
    plan.apply(warehouse.dialect)
    with pytest.raises(
        WarehouseLoadError, match=r"'us_east' for 2024-01-15 \(batch " + B2 + r"\).*step 'ledger'"
    ) as info:
        warehouse.load_region(batch)
    assert (info.value.region, info.value.business_date, info.value.batch_id) == (
        "us_east",
        DAY,
        B2,
    )
    assert isinstance(info.value.__cause__, InjectedFault)
    with warehouse.session():
        assert stage_tables(warehouse) == []

    assert fact(warehouse) == before
    assert ledger_statuses(warehouse, B2) == []
    warehouse.record_ledger(LedgerEntry(B2, "us_east", DAY, "load_failed", error=str(info.value)))
    assert ledger_statuses(warehouse, B2) == ["load_failed"]
    # the latest ledger row of the day is now the failure: backfill --missing-only reruns it
    assert warehouse.loaded_pairs(DAY, DAY) == set()

    result = warehouse.load_region(batch)  # rerun completes exactly once
    assert (result.inserted, result.updated, result.unchanged) == (5, 5, 0)
    assert ledger_statuses(warehouse, B2) == ["load_failed", "loaded"]
    assert len(fact(warehouse)) == 10
    assert warehouse.loaded_pairs(DAY, DAY) == {("us_east", DAY)}


def test_bad_stage_fails_before_merging(warehouse: Warehouse, loader: Loader) -> None:
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    # the staged file is corrupted between staging and loading
    path = warehouse.store.local_path(batch.files[0].key)
    assert path is not None
    path.write_bytes(b"not parquet")
    fill_step = warehouse.dialect.fill_steps[0]
    with pytest.raises(WarehouseLoadError, match=f"step '{fill_step}'"):
        warehouse.load_region(batch)
    assert fact(warehouse) == [] and warehouse.ledger() == []

    # files of another region under this region's name: refused, nothing merged
    europe = loader.stage(accepted_table("europe", DAY, [1], batch_id=B1), "europe", B1)
    mislabelled = RegionLoad("us_east", DAY, B1, europe.files)
    with pytest.raises(WarehouseLoadError, match="not of region 'us_east'"):
        warehouse.load_region(mislabelled)
    assert fact(warehouse) == []
    with warehouse.session():
        assert stage_tables(warehouse) == []


def test_history_and_loaded_pairs(warehouse: Warehouse) -> None:
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
        warehouse.record_ledger(entry)

    assert warehouse.accepted_history("us_east", d[4], 28) == [(d[0], 120), (d[1], 90)]
    assert warehouse.accepted_history("us_east", d[4], 3) == [(d[1], 90)]
    assert warehouse.accepted_history("europe", d[4], 28) == [(d[3], 7)]
    assert warehouse.loaded_pairs(d[0], d[4]) == {
        ("us_east", d[0]),
        ("europe", d[3]),
        ("us_east", d[4]),
    }
    assert warehouse.loaded_pairs(d[1], d[3]) == {("europe", d[3])}
    assert [r["batch_id"] for r in warehouse.ledger(d[1])] == ["b3", "b3"]
    with pytest.raises(ValueError, match="ledger status"):
        warehouse.record_ledger(LedgerEntry("b", "us_east", DAY, "done"))  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifierError):
        warehouse.accepted_history("us_east; drop table x", DAY, 3)


def test_ensure_schema_creates_the_tables_and_adds_missing_columns_keeping_rows(
    make_warehouse: Callable[[], Warehouse],
) -> None:
    wh = make_warehouse()
    d = wh.dialect
    old = [c for c in SALES_FACT_COLUMNS if c.name in ("region", "sale_id", "unit_price")]
    with d.connect() as con:  # an older sales_fact with three columns
        d.prepare_schema(con)
        d.execute(con, "ddl", sql.create_table_sql(d, "sales_fact", old))
        d.begin(con)
        d.execute(
            con,
            "ddl",
            f"INSERT INTO {d.table('sales_fact')} ({d.cols(['region', 'sale_id', 'unit_price'])}) "
            f"VALUES ({d.params(3)}), ({d.params(3)})",
            ["us_east", 1, Decimal("2.50"), "us_east", 2, Decimal("3.50")],
        )
        d.commit(con)

    added = wh.ensure_schema()

    assert "sales_fact.extras" in added and "sales_fact.effective_discount_rate" in added
    assert "sales_fact.loaded_at" in added
    assert not any(a.startswith("sales_fact.sale_id") for a in added)
    assert [(r["sale_id"], str(r["unit_price"]), r["extras"]) for r in wh.fact_rows()] == [
        (1, "2.50", None),
        (2, "3.50", None),
    ]
    with d.connect() as con:
        for table, columns in TABLES.items():
            assert d.existing_columns(con, table) == {c.name for c in columns}
    assert wh.ensure_schema() == []  # idempotent


def _column_info(wh: Warehouse, table: str, column: str) -> list[tuple[str, str]]:
    d = wh.dialect
    assert isinstance(d, DuckDBDialect | SnowflakeDialect)
    prefix = "retail_db." if isinstance(d, SnowflakeDialect) else ""
    schema = d.catalog_name(d.schema or "main")
    found = wh.query(
        f"SELECT data_type, is_nullable FROM {prefix}information_schema.columns "
        f"WHERE table_schema = {d.param} AND table_name = {d.param} AND column_name = {d.param}",
        [schema, d.catalog_name(table), d.catalog_name(column)],
    )
    return [(str(t).upper(), str(n).upper()) for t, n in found]


def test_the_engine_types_of_the_neutral_columns(warehouse: Warehouse, engine: str) -> None:
    expected = {
        "duckdb": {"extras": "VARCHAR", "updated_at": "TIMESTAMP WITH TIME ZONE"},
        "snowflake": {"extras": "VARIANT", "updated_at": "TIMESTAMP_TZ"},
    }[engine]
    for column, type_name in expected.items():
        assert _column_info(warehouse, "sales_fact", column) == [(type_name, "YES")]


def test_verify_passes_on_good_loads_and_fails_on_planted_rows(
    warehouse: Warehouse, loader: Loader
) -> None:
    east = warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    )
    apac = warehouse.load_region(
        loader.stage(accepted_table("apac", DAY, range(1, 4), batch_id=B1), "apac", B1)
    )
    counts = {
        "us_east": RegionRecord("us_east", rows_extracted=6, rows_accepted=5, rows_rejected=1),
        "apac": RegionRecord("apac", rows_extracted=4, rows_accepted=3, rows_rejected=1),
    }
    checks = warehouse.verify(B1, DAY, [east, apac], records=counts)
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

    d = warehouse.dialect
    names = [c.name for c in SALES_FACT_COLUMNS]

    def copy_row(of: int, **values: Any) -> tuple[str, list[Any]]:
        """Insert a copy of stored us_east row ``of``, with ``values`` replaced."""
        select = ", ".join(d.param if n in values else d.ident(n) for n in names)
        return (
            f"INSERT INTO {{sales_fact}} ({d.cols(names)}) SELECT {select} FROM {{sales_fact}} "
            f"WHERE {d.ident('region')} = 'us_east' AND {d.ident('sale_id')} = {of}",
            [values[n] for n in names if n in values],
        )

    other_day = {"batch_id": "by hand", "sale_date": dt.date(2023, 12, 31)}
    execute(
        warehouse,
        copy_row(1),  # a duplicate key
        copy_row(3, **other_day),  # a second copy of a day's sale under another date
        # a key stored twice on another day only is not this day's business
        copy_row(4, **{**other_day, "sale_date": dt.date(2023, 12, 30), "sale_id": 99}),
        copy_row(99),
        (
            f"UPDATE {{sales_fact}} SET {d.ident('sale_date')} = {d.param} "
            f"WHERE {d.ident('region')} = 'apac' AND {d.ident('sale_id')} = 2",
            [dt.date(2024, 1, 14)],
        ),
    )
    bad = {
        (c.name, c.region): c
        for c in warehouse.verify(
            B1,
            DAY,
            [east, apac],
            records={
                "us_east": RegionRecord(
                    "us_east", rows_extracted=7, rows_accepted=5, rows_rejected=1
                )
            },
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
    record = bad[("fact_unique_keys", "*")].dq_record(B1, DAY, "flow-1")
    assert record["status"] == "fail" and warehouse.load_dq_results([record]) == 1


def test_rejects_and_dq_results_are_replaced_on_rerun(warehouse: Warehouse, loader: Loader) -> None:
    def day(region: str, batch: str, rejected: list[int | None]) -> RegionLoad:
        return loader.stage_day(
            accepted_table(region, DAY, [20, 21], batch_id=batch),
            region,
            batch,
            rejects=reject_table(region, DAY, rejected, batch_id=batch),
        )

    assert warehouse.load_region(day("us_east", B1, [1, None, 3])).rejects == 3
    assert warehouse.load_region(day("europe", B1, [9])).rejects == 1
    assert warehouse.load_region(day("us_east", B2, [3])).rejects == 1
    assert rejects_of(warehouse) == [("europe", 9, B1), ("us_east", 3, B2)]

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

    assert warehouse.load_dq_results([record(B1, "a", "pass"), record(B1, "b", "fail")]) == 2
    warehouse.load_dq_results([record(B2, "a", "warn")])
    warehouse.load_dq_results([record(B1, "a", "pass")])  # rerun of B1 replaces B1's results only
    assert rows(
        warehouse, "SELECT batch_id, check_name, status FROM {dq_results} ORDER BY 1, 2"
    ) == [(B1, "a", "pass"), (B2, "a", "warn")]
    with pytest.raises(ValueError, match="status 'ok'"):
        warehouse.load_dq_results([record(B1, "a", "ok")])


def test_dq_results_of_a_many_region_day_span_several_inserts_in_one_transaction(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows than one INSERT takes: every row lands, each once, or none of them."""
    from retail_etl.warehouse import engine as warehouse_engine

    monkeypatch.setattr(warehouse_engine, "DQ_ROWS_PER_INSERT", 7)
    records = [
        {
            "batch_id": B1,
            "business_date": DAY,
            "region": f"region_{i // 3:02d}",
            "check_name": f"check_{i % 3}",
            "measured": i,
            "threshold": 0,
            "status": "pass",
            "detail": "",
            "flow_run_id": "f",
        }
        for i in range(150)  # 50 regions x 3 checks: 21 INSERTs of 7 rows and one of 3
    ]
    assert warehouse.load_dq_results(records) == 150
    assert rows(
        warehouse, "SELECT count(*), count(DISTINCT region), sum(measured) FROM {dq_results}"
    ) == [(150, 50, sum(range(150)))]
    # a rerun whose last INSERT fails (statement 1 deletes, 2..23 insert) keeps the first run's
    FaultPlan("dq_results", nth=23).apply(warehouse.dialect)
    rerun = [{**r, "measured": 0} for r in records]
    with pytest.raises(WarehouseError, match="injected warehouse failure"):
        warehouse.load_dq_results(rerun)
    assert rows(warehouse, "SELECT count(*), sum(measured) FROM {dq_results}") == [
        (150, sum(range(150)))
    ]


@duckdb_only
def test_duckdb_concurrent_loads_of_two_dates_queue_and_do_not_collide(
    warehouse: Warehouse, loader: Loader
) -> None:
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
        threading.Thread(target=lambda b=b: results.append(warehouse.load_region(b)))
        for b in batches
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.inserted for r in results) == [199, 200]
    assert len(fact(warehouse)) == 399
    assert warehouse.loaded_pairs(DAY, day2) == {("us_east", DAY), ("us_east", day2)}


@pytest.mark.integration
def test_duckdb_loads_from_the_s3_staging_store(tmp_path: Path, s3_store: S3StagingStore) -> None:
    store = s3_store
    wh = Warehouse(DuckDBDialect(tmp_path / "wh.duckdb", store), store)
    wh.ensure_schema()
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    batch = Loader(tmp_path, store).stage(table, "us_east", B1, target_file_rows=4)

    result = wh.load_region(batch)

    assert (result.staged_rows, result.inserted) == (10, 10)
    assert accepted_view(fact(wh)) == expected_rows(table)


# --------------------------------------------------------------------------- schema changes


def test_extras_json_reaches_sales_fact_and_can_be_queried(
    warehouse: Warehouse, loader: Loader, engine: str
) -> None:
    table = accepted_table("us_east", DAY, range(1, 5), batch_id=B1)  # odd ids carry extras
    warehouse.load_region(loader.stage(table, "us_east", B1))

    query = {
        "duckdb": "SELECT sale_id, json_extract_string(extras, '$.loyalty_tier') "
        "FROM {sales_fact} ORDER BY sale_id",
        "snowflake": 'SELECT "SALE_ID", "EXTRAS":loyalty_tier::VARCHAR FROM {sales_fact} '
        'ORDER BY "SALE_ID"',
    }[engine]
    assert rows(warehouse, query) == [(1, "gold1"), (2, None), (3, "gold3"), (4, None)]


def test_a_contract_column_added_by_a_new_release_is_added_nullable_keeping_rows(
    warehouse: Warehouse, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retail_etl.warehouse import base

    warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    )
    before = accepted_view(fact(warehouse))
    # The next release's contract has one more fact column.
    channel = WarehouseColumn("sales_channel", pa.string())
    monkeypatch.setitem(base.TABLES, base.SALES_FACT, (*base.SALES_FACT_COLUMNS, channel))

    assert warehouse.ensure_schema() == ["sales_fact.sales_channel"]

    (info,) = _column_info(warehouse, "sales_fact", "sales_channel")
    assert info[0] in {"VARCHAR", "TEXT"} and info[1] == "YES"
    assert accepted_view(fact(warehouse)) == before
    assert rows(warehouse, "SELECT count(*) FROM {sales_fact} WHERE sales_channel IS NULL") == [
        (3,)
    ]
    # Loads keep working on the wider table; the new column stays NULL until it is fed.
    result = warehouse.load_region(
        loader.stage(accepted_table("us_east", DAY, range(4, 6), batch_id=B2), "us_east", B2)
    )
    assert result.inserted == 2
    assert warehouse.ensure_schema() == []


def test_schema_history_records_each_fingerprint_change_once(warehouse: Warehouse) -> None:
    columns = {"sale_id": "bigint", "channel": "text"}

    assert warehouse.latest_schema("us_east") is None
    assert warehouse.record_schema("us_east", "fp1", columns, "new column channel (text)", B1, "f1")
    assert not warehouse.record_schema(
        "us_east", "fp1", columns, "new column channel (text)", B2, "f2"
    )
    assert warehouse.record_schema("europe", "fp1", columns, "new column channel (text)", B2, "f2")
    assert warehouse.latest_schema("us_east") == "fp1"
    assert warehouse.record_schema(
        "us_east", "fp2", {"sale_id": "bigint"}, "matches the contract", B2, None
    )
    assert warehouse.latest_schema("us_east") == "fp2"

    history = warehouse.schema_history("us_east")
    assert [(h["fingerprint"], h["first_seen_batch_id"], h["flow_run_id"]) for h in history] == [
        ("fp1", B1, "f1"),
        ("fp2", B2, None),
    ]
    assert json.loads(history[0]["columns"]) == columns
    assert history[0]["differences"] == "new column channel (text)"
    assert history[0]["first_seen_at"] <= history[1]["first_seen_at"]
    with pytest.raises(InvalidIdentifierError):
        warehouse.record_schema("us_east; drop table x", "fp3", columns, "", B1, None)


def test_fingerprints_in_the_ledger_and_fact_day_stats(
    warehouse: Warehouse, loader: Loader
) -> None:
    """The 'loaded' row carries the batch's source fingerprint; ``ledger_states`` gives each
    pair's latest row; ``fact_day_stats`` counts and sums the fact per (region, date)."""
    table = accepted_table("us_east", DAY, range(1, 6), batch_id=B1)
    amount = sum(table.column("total_amount").to_pylist())
    batch = loader.stage(table, "us_east", B1)
    record = dataclasses.replace(
        batch.record or RegionRecord(batch.region), source_fingerprint="fp-1"
    )
    warehouse.load_region(dataclasses.replace(batch, record=record))
    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    warehouse.record_ledger(LedgerEntry("b-def", "us_west", DAY, "deferred", finished_at=later))
    warehouse.record_ledger(LedgerEntry("b-old", "europe", DAY, "loaded", source_fingerprint="old"))
    warehouse.record_ledger(
        LedgerEntry("b-new", "europe", DAY, "gate_failed", finished_at=later, error="x")
    )
    outside = DAY + dt.timedelta(days=5)
    warehouse.record_ledger(
        LedgerEntry("b-out", "us_east", outside, "loaded", source_fingerprint="o")
    )

    assert warehouse.ledger_states(DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)) == {
        ("us_east", DAY): LedgerState("loaded", "fp-1"),
        ("us_west", DAY): LedgerState("deferred", None),
        ("europe", DAY): LedgerState("gate_failed", None),
    }
    assert warehouse.fact_day_stats(DAY, DAY) == {("us_east", DAY): (5, amount)}
    assert warehouse.fact_day_stats(outside, outside) == {}


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
    warehouse: Warehouse, loader: Loader
) -> None:
    first = warehouse.load_region(
        loader.stage_day(accepted_table("us_east", DAY, range(1, 11), batch_id=B1), "us_east", B1)
    )
    europe = warehouse.load_region(
        loader.stage_day(accepted_table("europe", DAY, [7, 8, 9], batch_id=B1), "europe", B1)
    )
    stored = {r["sale_id"]: r for r in fact(warehouse, "us_east")}

    result = warehouse.load_region(_day_with_changes(loader, B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (0, 0, 6, 4)
    assert sorted(r["sale_id"] for r in fact(warehouse, "us_east")) == [1, 2, 3, 4, 5, 6]
    assert len(fact(warehouse, "europe")) == 3  # the same sale ids in another region stay
    retracted = {r["sale_id"]: r for r in warehouse.retractions("us_east")}
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
    (entry,) = [e for e in warehouse.ledger() if e["batch_id"] == B2]
    assert (entry["rows_extracted"], entry["rows_accepted"]) == (9, 6)
    assert (entry["rows_rejected"], entry["rows_retracted"], entry["rows_deleted"]) == (1, 2, 4)
    counts = {
        "us_east": RegionRecord(
            "us_east", rows_extracted=9, rows_accepted=6, rows_rejected=1, rows_retracted=2
        )
    }
    checks = warehouse.verify(B2, DAY, [result], records=counts)
    assert_verified(checks, records=True)
    assert first.deleted == europe.deleted == 0

    before = (fact(warehouse), warehouse.retractions())
    for batch_id in (B2, "20240115_00000000000c"):  # the same batch again, then a new one
        again = warehouse.load_region(_day_with_changes(loader, batch_id))
        assert (again.inserted, again.updated, again.unchanged, again.deleted) == (0, 0, 6, 0)
        assert (fact(warehouse), warehouse.retractions()) == before
        checks = warehouse.verify(batch_id, DAY, [again], records=counts)
        assert_verified(checks, records=True)


def test_a_key_retracted_on_its_first_load_never_reaches_the_fact(
    warehouse: Warehouse, loader: Loader
) -> None:
    result = warehouse.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, [1], batch_id=B1),
            "us_east",
            B1,
            retractions=retraction_table("us_east", DAY, [42], batch_id=B1),
        )
    )
    assert (result.inserted, result.deleted) == (1, 0)
    assert [r["sale_id"] for r in fact(warehouse)] == [1]
    assert warehouse.retractions() == []  # nothing left the fact
    assert warehouse.ledger()[0]["rows_retracted"] == 1


def test_a_retracted_key_stored_under_another_date_is_removed(
    warehouse: Warehouse, loader: Loader
) -> None:
    """A sale that moved to this day in the source and was then refunded: its key is
    retracted wherever it is stored."""
    other = DAY - dt.timedelta(days=1)
    warehouse.load_region(
        loader.stage_day(accepted_table("us_east", other, [5, 6], batch_id=B1), "us_east", B1)
    )
    result = warehouse.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, [1], batch_id=B2),
            "us_east",
            B2,
            retractions=retraction_table("us_east", DAY, [5], batch_id=B2),
        )
    )
    assert result.deleted == 1
    assert sorted((r["sale_id"], r["sale_date"]) for r in fact(warehouse)) == [
        (1, DAY),
        (6, other),
    ]
    ((sale_date, reason),) = [(r["sale_date"], r["reason"]) for r in warehouse.retractions()]
    assert (sale_date, reason) == (other, "status_refunded")


def test_a_failure_in_the_load_rolls_back_retractions_and_rejects(
    warehouse: Warehouse, loader: Loader
) -> None:
    warehouse.load_region(
        loader.stage_day(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1),
            "us_east",
            B1,
            rejects=reject_table("us_east", DAY, [11], batch_id=B1),
        )
    )
    before = (fact(warehouse), rejects_of(warehouse), warehouse.ledger())

    # the rejects file of the rerun is unreadable: nothing of the rerun lands
    broken = _day_with_changes(loader, B2)
    path = warehouse.store.local_path(broken.reject_files[0].key)
    assert path is not None
    path.write_bytes(b"not parquet")
    side_step = warehouse.dialect.fill_steps[1]
    with pytest.raises(WarehouseLoadError, match=f"step '{side_step}'"):
        warehouse.load_region(broken)
    # the ledger row cannot be written after the MERGE and the retractions ran: all undone
    FaultPlan("ledger").apply(warehouse.dialect)
    with pytest.raises(WarehouseLoadError, match="step 'ledger'"):
        warehouse.load_region(_day_with_changes(loader, B2))

    after = (fact(warehouse), rejects_of(warehouse), warehouse.ledger())
    assert after == before and warehouse.retractions() == []
    assert warehouse.load_region(_day_with_changes(loader, B2)).deleted == 4  # lands once
    assert rejects_of(warehouse) == [("us_east", 10, B2)]


@pytest.mark.parametrize("kind", ["sales", "rejects", "retractions"])
def test_stage_table_names_fit_for_the_longest_allowed_region(kind: str) -> None:
    from retail_etl.settings import MAX_REGION_LENGTH

    region = "r" * MAX_REGION_LENGTH
    name = sql.stage_table_name(kind, "20240115_0123456789ab", region)  # type: ignore[arg-type]
    assert len(name) <= 63 and name.endswith(region)


def test_stage_tables_are_unique_per_batch_and_region() -> None:
    names = {
        sql.stage_table_name("sales", "20240115_3f9a2c1b7d4e", "us_east"),
        sql.stage_table_name("sales", "20240116_3f9a2c1b7d4e", "us_east"),
        sql.stage_table_name("sales", "20240115_3f9a2c1b7d4e", "europe"),
        sql.stage_table_name("rejects", "20240115_3f9a2c1b7d4e", "us_east"),
    }
    assert len(names) == 4
    assert "stg_sales_20240115_3f9a2c1b7d4e_us_east" in names


# --------------------------------------------------------------------------- Snowflake only:
# statement text, the stage, secrets, the block's session parameters


def test_snowflake_ddl_text_clusters_the_fact_and_quotes_identifiers(
    store: LocalStagingStore,
) -> None:
    # fakesnow ignores CLUSTER BY, so check the statement itself
    d = SnowflakeDialect(SnowflakeConnection(lambda: None, "retail_db", "retail"), store)
    ddl = sql.create_table_sql(
        d, "sales_fact", SALES_FACT_COLUMNS, options=d.table_options("sales_fact")
    )
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "RETAIL_DB"."RETAIL"."SALES_FACT" (')
    assert ddl.endswith('CLUSTER BY ("SALE_DATE", "REGION")')
    assert '"EXTRAS" VARIANT' in ddl and '"UNIT_PRICE" NUMBER(10,2)' in ddl
    with pytest.raises(ValueError):
        d.ident('sales"; DROP TABLE x; --')
    copy = d.copy_into_sql("stg_sales_x", 2)
    assert "FILES = (%s, %s)" in copy and "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE" in copy


class RecordingConnection:
    """A seam around a DB-API connection that keeps every statement and its parameters."""

    def __init__(self, conn: Any, log: list[tuple[str, Any]]) -> None:
        self._conn, self._log = conn, log

    def cursor(self) -> Any:
        cursor, log = self._conn.cursor(), self._log

        class Recording:
            def execute(self, text: str, params: Any = None) -> Any:
                log.append((text, params))
                return cursor.execute(text, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

        return Recording()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _s3_warehouse(
    fake_snowflake: Callable[[], Any], statements: list[tuple[str, Any]], **kwargs: Any
) -> Warehouse:
    """The Snowflake warehouse over an S3 store, every statement recorded."""
    store = S3StagingStore("bkt", "staging", client=None)
    connection = SnowflakeConnection(
        lambda: RecordingConnection(fake_snowflake(), statements), "retail_db", "retail"
    )
    return Warehouse(SnowflakeDialect(connection, store, **kwargs), store)


def test_snowflake_a_storage_integration_stage_sends_no_keys(
    fake_snowflake: Callable[[], Any],
) -> None:
    statements: list[tuple[str, Any]] = []
    wh = _s3_warehouse(fake_snowflake, statements, storage_integration="retail_s3")
    assert isinstance(wh.dialect, SnowflakeDialect) and wh.dialect.url == "s3://bkt/staging/"
    wh.ensure_schema()  # schema, file format, s3 stage (not read by fakesnow), tables
    (create,) = [(t, p) for t, p in statements if "CREATE OR REPLACE STAGE" in t]
    assert create[0].endswith('URL = %s STORAGE_INTEGRATION = "RETAIL_S3"')
    assert create[1] == ["s3://bkt/staging/"]
    assert "CREDENTIALS" not in " ".join(t for t, _ in statements)
    stages = wh.query("SHOW STAGES IN SCHEMA retail_db.retail")
    assert any("s3://bkt/staging/" in str(row) for row in stages)


def test_snowflake_without_an_integration_the_stage_must_exist_and_keys_are_never_sent(
    fake_snowflake: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    statements: list[tuple[str, Any]] = []
    wh = _s3_warehouse(fake_snowflake, statements)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WarehouseError) as info:
        wh.ensure_schema()
    message = str(info.value)
    assert "the external stage retail_etl_staging over s3://bkt/staging/ does not exist" in message
    assert "RETAIL_ETL_SNOWFLAKE_STORAGE_INTEGRATION" in message
    assert not any("CREATE OR REPLACE STAGE" in t for t, _ in statements)

    # An administrator created the stage once: the pipeline uses it as it is.
    with fake_snowflake() as admin:
        admin.cursor().execute(
            "CREATE STAGE retail_db.retail.retail_etl_staging URL = 's3://bkt/staging/'"
        )
    statements.clear()
    wh.ensure_schema()
    sent = repr(statements)
    assert "SHOW STAGES LIKE" in sent and "CREATE OR REPLACE STAGE" not in sent
    assert SECRET not in sent and KEY_ID not in sent and SECRET not in caplog.text


def test_snowflake_block_connection_bounds_every_session_in_time(
    fake_snowflake: Callable[[], Any],
) -> None:
    from blocks.targets import snowflake_connection
    from retail_etl.settings import get_settings

    asked: list[dict[str, Any]] = []

    class Credentials:
        def get_client(self, **kwargs: Any) -> Any:
            asked.append(kwargs)
            return fake_snowflake()

    class Connector:
        credentials = Credentials()
        database, warehouse, schema_ = "retail_db", "etl_wh", "retail"

    settings = get_settings(fresh=True).model_copy(
        update={"snowflake_login_timeout_seconds": 7, "snowflake_statement_timeout_seconds": 90}
    )
    store = S3StagingStore("bkt", "staging", client=None)
    connection = snowflake_connection(Connector(), settings)
    assert (connection.database, connection.schema) == ("retail_db", "retail")
    Warehouse(SnowflakeDialect(connection, store), store).query("SELECT 1")
    (kwargs,) = asked
    assert kwargs["autocommit"] is False and kwargs["login_timeout"] == 7
    assert kwargs["network_timeout"] == 90
    assert kwargs["session_parameters"] == {"STATEMENT_TIMEOUT_IN_SECONDS": 90, "LOCK_TIMEOUT": 90}


def test_snowflake_needs_the_s3_store(tmp_path: Path) -> None:
    from retail_etl.settings import get_settings
    from retail_etl.warehouse import configured_dialect

    settings = get_settings(fresh=True).model_copy(update={"warehouse": "snowflake"})
    connection = SnowflakeConnection(lambda: None, "retail_db", "retail")
    with pytest.raises(ValueError, match="S3 staging store"):
        configured_dialect(settings, LocalStagingStore(tmp_path), snowflake=connection)


@snowflake_only
def test_snowflake_stage_tables_a_killed_load_left_are_dropped_by_a_later_run(
    warehouse: Warehouse, engine: str
) -> None:
    """TRANSIENT stage tables outlive a killed load (DuckDB's TEMP ones die with it). fakesnow
    reports every table as created in 1970, so the age bound itself is not exercised here."""
    d = warehouse.dialect
    name = sql.stage_table_name("sales", B1, "us_east")
    with d.connect() as con:
        d.create_stage_table(con, name, SALES_STAGE_COLUMNS)
    assert stage_tables(warehouse) == [name.upper()]
    assert warehouse.drop_stale_stage_tables(older_than_hours=1) == [name]
    assert stage_tables(warehouse) == []
    assert [r["region"] for r in warehouse.fact_rows()] == []  # the permanent tables stay


# --------------------------------------------------------------------------- loads under
# contention: the region's whole transaction retried on a lock timeout; Snowflake's session


def lock_timeout(engine: str) -> Callable[[str], BaseException]:
    """The engine's own error for a lock that was not granted in time."""
    if engine == "duckdb":
        import duckdb

        return lambda message: duckdb.IOException(
            f'{message}: Could not set lock on file "wh.duckdb": Conflicting lock is held in '
            "/usr/bin/python3 (PID 4242)"
        )
    from snowflake.connector.errors import ProgrammingError

    return lambda message: ProgrammingError(
        msg=f"{message}: Statement has locked table SALES_FACT and this lock has not yet been "
        "released",
        errno=625,
        sqlstate="57014",
    )


def _retrying(wh: Warehouse, sleeps: list[float], attempts: int = 3) -> Warehouse:
    return Warehouse(wh.dialect, wh.store, retry=LoadRetry(attempts, 2.0, sleeps.append))


def test_a_lock_timeout_is_retried_and_the_third_attempt_loads_exactly_once(
    warehouse: Warehouse, loader: Loader, engine: str
) -> None:
    sleeps: list[float] = []
    wh = _retrying(warehouse, sleeps)
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    plan = FaultPlan("merge", times=2, error=lock_timeout(engine))
    plan.apply(wh.dialect)

    result = wh.load_region(loader.stage(table, "us_east", B1))

    assert plan.seen == 3 and plan.failed == 2  # two attempts failed, the third merged
    assert sleeps == [2.0, 4.0]  # backoff doubles
    assert (result.inserted, result.updated) == (10, 0)
    assert accepted_view(fact(wh)) == expected_rows(table)
    assert ledger_statuses(wh, B1) == ["loaded"]  # one ledger row: the failed attempts left none
    with wh.session():
        assert stage_tables(wh) == []


def test_retries_are_bounded(warehouse: Warehouse, loader: Loader, engine: str) -> None:
    sleeps: list[float] = []
    wh = _retrying(warehouse, sleeps, attempts=2)
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    locked = FaultPlan("merge", times=None, error=lock_timeout(engine))
    locked.apply(wh.dialect)
    with pytest.raises(WarehouseLoadError, match="step 'merge'"):
        wh.load_region(batch)
    assert locked.failed == 2 and sleeps == [2.0]
    assert fact(wh) == [] and ledger_statuses(wh, B1) == []


def test_an_error_that_is_not_a_lock_timeout_is_not_retried(
    warehouse: Warehouse, loader: Loader
) -> None:
    sleeps: list[float] = []
    wh = _retrying(warehouse, sleeps)
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1)
    broken = FaultPlan("merge", times=None)
    broken.apply(wh.dialect)
    with pytest.raises(WarehouseLoadError) as info:
        wh.load_region(batch)
    assert isinstance(info.value.__cause__, InjectedFault)
    assert broken.failed == 1 and sleeps == []


def _snowflake_loading(
    fake_snowflake: FakeSnowflake, store: LocalStagingStore, **load: Any
) -> Warehouse:
    connection = SnowflakeConnection(fake_snowflake, "retail_db", "retail", warehouse="etl_wh")
    dialect = SnowflakeDialect(connection, store, load=SnowflakeLoadOptions(**load))
    wh = Warehouse(dialect, store, retry=LoadRetry(1))
    wh.ensure_schema()
    return wh


def test_snowflake_load_sets_its_bounds_and_tags_every_region_with_batch_and_region(
    fake_snowflake: FakeSnowflake, store: LocalStagingStore, loader: Loader
) -> None:
    wh = _snowflake_loading(
        fake_snowflake, store, lock_timeout_s=120, statement_timeout_s=900, warehouse="load_wh"
    )
    loads = [
        loader.stage(accepted_table(r, DAY, range(1, 4), batch_id=B1), r, B1)
        for r in ("us_east", "europe")
    ]
    fake_snowflake.statements.clear()
    with wh.loading():
        for load in loads:
            wh.load_region(load)

    session = [(t, p) for t, p in fake_snowflake.statements if t.startswith(("ALTER", "USE"))]
    tags = [
        {"app": "retail-etl", "batch_id": B1, "business_date": "2024-01-15", "region": r}
        for r in ("us_east", "europe")
    ]
    assert session == [
        ("ALTER SESSION SET LOCK_TIMEOUT = %s STATEMENT_TIMEOUT_IN_SECONDS = %s", [120, 900]),
        ('USE WAREHOUSE "LOAD_WH"', None),
        ("ALTER SESSION SET QUERY_TAG = %s", [json.dumps(tags[0], sort_keys=True)]),
        ("ALTER SESSION UNSET QUERY_TAG", None),
        ("ALTER SESSION SET QUERY_TAG = %s", [json.dumps(tags[1], sort_keys=True)]),
        ("ALTER SESSION UNSET QUERY_TAG", None),
    ]
    # every statement of a region's load ran while its tag was set (a fresh day's write into
    # the fact is the insert path's INSERT)
    writes = ("MERGE", f"INSERT INTO {wh.dialect.table('sales_fact')}")
    merges = [i for i, (t, _) in enumerate(fake_snowflake.statements) if t.startswith(writes)]
    tag_at = [i for i, (t, _) in enumerate(fake_snowflake.statements) if "QUERY_TAG" in t]
    assert tag_at[0] < merges[0] < tag_at[1] < tag_at[2] < merges[1] < tag_at[3]
    assert {r["region"] for r in fact(wh)} == {"us_east", "europe"}


def test_snowflake_resize_for_the_load_is_restored_after_a_failure(
    fake_snowflake: FakeSnowflake, store: LocalStagingStore, loader: Loader
) -> None:
    wh = _snowflake_loading(fake_snowflake, store, warehouse_size="XLARGE")
    batch = loader.stage(accepted_table("us_east", DAY, range(1, 4), batch_id=B1), "us_east", B1)
    FaultPlan("merge").apply(wh.dialect)
    fake_snowflake.statements.clear()
    with pytest.raises(WarehouseLoadError), wh.loading():
        wh.load_region(batch)
    resizes = fake_snowflake.sent("ALTER WAREHOUSE")
    assert resizes == [
        ('ALTER WAREHOUSE "ETL_WH" SET WAREHOUSE_SIZE = %s', ["XLARGE"]),
        ('ALTER WAREHOUSE "ETL_WH" SET WAREHOUSE_SIZE = %s', ["X-SMALL"]),
    ]
    assert fake_snowflake.warehouses["ETL_WH"] == "X-SMALL"
    assert fact(wh) == [] and ledger_statuses(wh, B1) == []

    # after a good load too; a restore that fails after a good load is an error naming it
    with wh.loading():
        wh.load_region(batch)
    assert fake_snowflake.warehouses["ETL_WH"] == "X-SMALL"
    fake_snowflake.fail_on = lambda text, params: (
        RuntimeError("insufficient privileges") if params == ["X-SMALL"] else None
    )
    with pytest.raises(WarehouseError, match="etl_wh could not be restored to size X-SMALL"):
        with wh.loading():
            pass
    assert fake_snowflake.warehouses["ETL_WH"] == "XLARGE"


def test_snowflake_resize_needs_a_warehouse_name(store: LocalStagingStore) -> None:
    with pytest.raises(ValueError, match="RETAIL_ETL_SNOWFLAKE_LOAD_WAREHOUSE"):
        SnowflakeDialect(
            SnowflakeConnection(lambda: None, "retail_db", "retail"),
            store,
            load=SnowflakeLoadOptions(warehouse_size="XLARGE"),
        )


# --------------------------------------------------------------------------- several regions
# in one transaction (load_regions) and the insert path


def _first_days(loader: Loader) -> list[RegionLoad]:
    """B1: three regions' first load (us_east with rejects, apac with a key it retracts)."""
    return [
        loader.stage_day(
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1),
            "us_east",
            B1,
            rejects=reject_table("us_east", DAY, [11], batch_id=B1),
        ),
        loader.stage_day(accepted_table("europe", DAY, [1, 2, 3, 4], batch_id=B1), "europe", B1),
        loader.stage_day(
            accepted_table("apac", DAY, [1, 2], batch_id=B1),
            "apac",
            B1,
            retractions=retraction_table("apac", DAY, [3], batch_id=B1),
        ),
    ]


def _second_days(loader: Loader) -> list[RegionLoad]:
    """B2 over B1: us_east retracts, deletes, loses and rejects keys; europe has newer versions
    of two keys (one duplicated in the batch) and a new one, 9: the key us_east no longer has
    (the checks of a region's keys must not see another region's); apac is unchanged."""
    t1 = dt.datetime(2024, 1, 16, 3, tzinfo=dt.UTC)
    europe = pa.concat_tables(
        [
            accepted_table("europe", DAY, [1, 2], batch_id=B2),
            accepted_table("europe", DAY, [3, 4, 4], batch_id=B2, updated_at=t1, price="12.00"),
            accepted_table("europe", DAY, [9], batch_id=B2),
        ]
    )
    return [
        _day_with_changes(loader, B2),
        loader.stage_day(europe, "europe", B2),
        loader.stage_day(accepted_table("apac", DAY, [1, 2], batch_id=B2), "apac", B2),
    ]


def _stored(wh: Warehouse) -> dict[str, Any]:
    """Everything a load writes, without the timestamps of the moment it ran."""
    timing = {"loaded_at", "updated_in_warehouse_at", "retracted_at", "rejected_at"}
    ledger_timing = {"load_seconds", "started_at", "finished_at"}
    return {
        "fact": [{k: v for k, v in r.items() if k not in timing} for r in fact(wh)],
        "retractions": [
            {
                **{k: v for k, v in r.items() if k not in timing},
                "row_values": {
                    k: v for k, v in json.loads(r["row_values"]).items() if k not in timing
                },
            }
            for r in wh.retractions()
        ],
        "rejects": rejects_of(wh),
        "ledger": sorted(
            (tuple((k, v) for k, v in r.items() if k not in ledger_timing) for r in wh.ledger()),
            key=repr,
        ),
    }


def _counts(result: Any) -> tuple[Any, ...]:
    return dataclasses.astuple(dataclasses.replace(result, seconds=0.0))


def test_a_batch_of_regions_loads_exactly_what_loads_one_by_one_would(
    make_warehouse: Callable[..., Warehouse], loader: Loader
) -> None:
    one_by_one, batched = make_warehouse(), make_warehouse("batched")
    for wh in (one_by_one, batched):
        wh.ensure_schema()
    log = StatementLog()
    log.apply(batched.dialect)

    for day in (_first_days(loader), _second_days(loader)):
        singles = [one_by_one.load_region(load) for load in day]
        log.statements.clear()
        merges, errors = batched.load_regions(day)

        assert errors == {}
        assert {r: _counts(m) for r, m in merges.items()} == {s.region: _counts(s) for s in singles}
        # one transaction: one write into the fact, one ledger insert for the three regions
        assert len(log.of_kind("merge")) == 1 and len(log.of_kind("ledger")) == 1
        assert _stored(batched) == _stored(one_by_one)

    # the second day did something of every kind, in every region it should
    second = {r: (m.inserted, m.updated, m.unchanged, m.deleted) for r, m in merges.items()}
    assert second == {"us_east": (0, 0, 6, 4), "europe": (1, 2, 2, 0), "apac": (0, 0, 2, 0)}
    assert merges["europe"].duplicate_rows == 1 and merges["us_east"].rejects == 1
    with batched.session():
        assert stage_tables(batched) == []


def _break(wh: Warehouse, load: RegionLoad, how: str) -> RegionLoad:
    """``load`` with its sales part broken: an unreadable file, or a manifest row count that
    is not the file's."""
    if how == "unreadable file":
        path = wh.store.local_path(load.files[0].key)
        assert path is not None
        path.write_bytes(b"not parquet")
        return load
    wrong = dataclasses.replace(load.files[0], rows=load.files[0].rows + 1)
    return dataclasses.replace(load, files=(wrong, *load.files[1:]))


@pytest.mark.parametrize("how", ["unreadable file", "wrong row count"])
def test_a_bad_region_in_a_batch_fails_alone_and_the_others_load(
    warehouse: Warehouse, loader: Loader, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    loads = _first_days(loader)
    loads[1] = _break(warehouse, loads[1], how)  # europe
    caplog.set_level(logging.WARNING, logger="retail_etl.warehouse")

    merges, errors = warehouse.load_regions(loads)

    assert set(merges) == {"us_east", "apac"} and set(errors) == {"europe"}
    error = errors["europe"]
    assert isinstance(error, WarehouseLoadError) and error.region == "europe"
    assert "loading region 'europe' for 2024-01-15" in str(error)
    if how == "wrong row count":  # the batch's own check named the region too
        assert "the staged files have 5" in str(error)
        assert "region 'europe' 2024-01-15: the stage holds 4 staged row(s)" in caplog.text
    assert "loading them one by one" in caplog.text
    assert sorted({r["region"] for r in fact(warehouse)}) == ["apac", "us_east"]
    assert accepted_view(fact(warehouse, "us_east")) == expected_rows(
        accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    )
    assert sorted((e["region"], e["status"]) for e in warehouse.ledger()) == [
        ("apac", "loaded"),
        ("us_east", "loaded"),
    ]
    assert rejects_of(warehouse) == [("us_east", 11, B1)]
    with warehouse.session():
        assert stage_tables(warehouse) == []


def test_a_batch_that_fails_in_its_shared_merge_is_loaded_region_by_region_exactly_once(
    warehouse: Warehouse, loader: Loader
) -> None:
    plan = FaultPlan("merge")  # the batch's one write into the fact fails, not the next ones
    plan.apply(warehouse.dialect)
    merges, errors = warehouse.load_regions(_first_days(loader))
    assert errors == {} and plan.seen == 4 and plan.failed == 1  # the batch, then 3 regions
    assert {r: m.inserted for r, m in merges.items()} == {"us_east": 10, "europe": 4, "apac": 2}
    assert sorted(e["region"] for e in warehouse.ledger()) == ["apac", "europe", "us_east"]
    assert len(fact(warehouse)) == 16


def test_a_lock_timeout_retries_the_batch_as_one_transaction(
    warehouse: Warehouse, loader: Loader, engine: str
) -> None:
    sleeps: list[float] = []
    wh = _retrying(warehouse, sleeps)
    plan = FaultPlan("merge", error=lock_timeout(engine))
    plan.apply(wh.dialect)
    merges, errors = wh.load_regions(_first_days(loader))
    assert errors == {} and set(merges) == {"us_east", "europe", "apac"}
    assert plan.seen == 2 and sleeps == [2.0]  # the batch again, not region by region
    assert len(wh.ledger()) == 3


def test_the_insert_path_is_taken_for_a_fresh_day_only(
    warehouse: Warehouse, loader: Loader
) -> None:
    log = StatementLog()
    log.apply(warehouse.dialect)
    table = accepted_table("us_east", DAY, range(1, 6), batch_id=B1)

    def content_joins() -> int:
        """Classifications that compared content columns (the wide join of stored keys)."""
        return sum(k == "classify" and "IS DISTINCT FROM" in t for k, t in log.statements)

    fresh = warehouse.load_region(loader.stage(table, "us_east", B1))

    assert log.of_kind("merge") == ["INSERT"]
    assert (fresh.inserted, fresh.updated, fresh.unchanged) == (5, 0, 0)
    assert content_joins() == 0  # no key stored: the key-only join sufficed
    stored = fact(warehouse)
    assert accepted_view(stored) == expected_rows(table)
    assert all(r["loaded_at"] == r["updated_in_warehouse_at"] is not None for r in stored)

    # The key is (region, sale_id), not the date: sale 5 stored under the day before and now
    # offered under DAY (a newer version) must MERGE, not be inserted a second time.
    log.statements.clear()
    moved = accepted_table(
        "us_east",
        DAY + dt.timedelta(days=1),
        [5, 6],
        batch_id=B2,
        updated_at=dt.datetime(2024, 1, 16, 12, tzinfo=dt.UTC),
    )
    day2 = DAY + dt.timedelta(days=1)
    result = warehouse.load_region(loader.stage(moved, "us_east", B2, day=day2))

    assert log.of_kind("merge") == ["MERGE"]
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 0)
    assert content_joins() == 1
    stored = {r["sale_id"]: r for r in fact(warehouse)}
    assert sorted(stored) == [1, 2, 3, 4, 5, 6]  # sale 5 once, now under the new date
    assert stored[5]["sale_date"] == day2 and stored[5]["batch_id"] == B2

    # A batch where one region has stored keys and another none MERGEs (one write for both).
    log.statements.clear()
    merges, errors = warehouse.load_regions(
        [
            loader.stage(table, "us_east", "20240115_00000000000c"),
            loader.stage(
                accepted_table("apac", DAY, [1, 2], batch_id="20240115_00000000000c"),
                "apac",
                "20240115_00000000000c",
            ),
        ]
    )
    assert errors == {} and log.of_kind("merge") == ["MERGE"]
    # (sale 5 is stored in a newer version: the older one offered here changes nothing)
    assert (merges["apac"].inserted, merges["us_east"].unchanged) == (2, 5)
