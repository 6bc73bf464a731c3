"""Snowflake warehouse SQL against fakesnow (DuckDB underneath), staging from a file:// stage.

fakesnow cannot COPY from s3:// offline, so the external stage points at the local staging
root (``file://``); the COPY statement, FILES list, file format and MATCH_BY_COLUMN_NAME are the
production ones. fakesnow silently double-updates on duplicate MERGE keys where Snowflake
raises, so the dedup guard is tested on the exact MERGE source query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from retail_etl.staging import LocalStagingStore
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import (
    SALES_STAGE_COLUMNS,
    LedgerEntry,
    RegionLoad,
    WarehouseError,
    WarehouseLoadError,
)
from retail_etl.warehouse.snowflake_warehouse import SnowflakeWarehouse
from tests.test_staging import accepted_table, reject_table, retraction_table, write_parquet
from tests.warehouse_checks import check_fingerprints_and_day_stats

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

fakesnow = pytest.importorskip("fakesnow")
snowflake_connector = pytest.importorskip("snowflake.connector")

DAY = dt.date(2024, 1, 15)
B1 = "20240115_00000000000a"
B2 = "20240115_00000000000b"
KEY_ID = "AKIAFAKEKEYID0001"
SECRET = "fake-secret-Wk2/x9+Q"
ACCEPTED = list(sql.ACCEPTED)


@pytest.fixture
def fake_snowflake() -> Iterator[Callable[[], Any]]:
    """A fresh in-memory fakesnow per test; returns the connection factory."""
    with fakesnow.patch():
        yield lambda: snowflake_connector.connect(database="retail_db", schema="public")


@pytest.fixture
def store(tmp_path: Path) -> LocalStagingStore:
    return LocalStagingStore(tmp_path / "staging")


@pytest.fixture
def wh(fake_snowflake: Callable[[], Any], store: LocalStagingStore) -> SnowflakeWarehouse:
    warehouse = SnowflakeWarehouse(fake_snowflake, store, database="retail_db", schema="retail")
    warehouse.ensure_schema()
    return warehouse


def stage(
    tmp_path: Path,
    store: LocalStagingStore,
    table: pa.Table,
    region: str,
    batch_id: str,
    *,
    table_name: str = "sales",
    target_file_rows: int | None = None,
) -> RegionLoad:
    src = write_parquet(tmp_path / "transform" / f"{batch_id}-{region}-{table_name}.parquet", table)
    files = store.stage_dataset(
        table_name,
        DAY,
        region,
        batch_id,
        [src],  # type: ignore[arg-type]
        target_file_rows=target_file_rows,
    )
    return RegionLoad(
        region=region,
        business_date=DAY,
        batch_id=batch_id,
        files=tuple(files),
        flow_run_id="flow-1",
        rows_accepted=table.num_rows,
    )


def stage_day(
    tmp_path: Path,
    store: LocalStagingStore,
    sales: pa.Table,
    batch_id: str,
    *,
    rejects: pa.Table | None = None,
    retractions: pa.Table | None = None,
    region: str = "us_east",
) -> RegionLoad:
    """A region's whole day as the load subflow passes it (accepted, rejects, retractions)."""
    batch = stage(tmp_path, store, sales, region, batch_id)
    extra: dict[str, Any] = {}
    for name, table in (("rejects", rejects), ("retractions", retractions)):
        if table is not None:
            files = stage(tmp_path, store, table, region, batch_id, table_name=name).files
            extra["reject_files" if name == "rejects" else "retraction_files"] = files
    return dataclasses.replace(
        batch, rows_retracted=0 if retractions is None else retractions.num_rows, **extra
    )


def accepted_view(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        view = {k: r[k] for k in ACCEPTED}
        if view["extras"] is not None:  # VARIANT comes back as JSON text; compare parsed
            view["extras"] = json.loads(view["extras"])
        out.append(view)
    return out


def expected(table: pa.Table) -> list[dict[str, Any]]:
    rows = sorted(table.to_pylist(), key=lambda r: (r["region"], r["sale_id"]))
    for r in rows:
        if r["extras"] is not None:
            r["extras"] = json.loads(r["extras"])
    return rows


def stage_tables(wh: SnowflakeWarehouse) -> list[str]:
    rows = wh.query(
        "SELECT table_name FROM retail_db.information_schema.tables WHERE table_schema = 'RETAIL'"
    )
    return sorted(str(r[0]).lower() for r in rows if str(r[0]).lower().startswith("stg_"))


# --------------------------------------------------------------------------- schema


def test_ensure_schema_creates_objects_and_adds_missing_columns(
    fake_snowflake: Callable[[], Any], store: LocalStagingStore
) -> None:
    conn = fake_snowflake()
    cur = conn.cursor()
    cur.execute('CREATE SCHEMA IF NOT EXISTS "RETAIL_DB"."RETAIL"')
    cur.execute(
        'CREATE TABLE "RETAIL_DB"."RETAIL"."SALES_FACT" ("REGION" VARCHAR, '
        '"SALE_ID" NUMBER(19,0), "UNIT_PRICE" NUMBER(10,2))'
    )
    cur.execute("""INSERT INTO "RETAIL_DB"."RETAIL"."SALES_FACT" VALUES ('us_east', 1, 2.50)""")
    conn.close()
    wh = SnowflakeWarehouse(fake_snowflake, store, database="retail_db", schema="retail")

    added = wh.ensure_schema()

    assert "sales_fact.extras" in added and "sales_fact.loaded_at" in added
    assert "sales_fact.sale_id" not in added
    assert [(r["sale_id"], str(r["unit_price"]), r["extras"]) for r in wh.fact_rows()] == [
        (1, "2.50", None)
    ]
    tables = {
        str(r[0]).lower()
        for r in wh.query(
            "SELECT table_name FROM retail_db.information_schema.tables WHERE table_schema = %s",
            ["RETAIL"],
        )
    }
    assert tables == {
        "sales_fact",
        "sales_rejects",
        "sales_retractions",
        "dq_results",
        "etl_load_ledger",
        "source_schema_history",
    }
    types = dict(
        wh.query(
            "SELECT column_name, data_type FROM retail_db.information_schema.columns "
            "WHERE table_schema = 'RETAIL' AND table_name = 'SALES_FACT'"
        )
    )
    assert types["EXTRAS"] == "VARIANT" and types["UPDATED_AT"] == "TIMESTAMP_TZ"
    assert wh.ensure_schema() == []  # idempotent


def test_ddl_text_clusters_the_fact_and_quotes_identifiers() -> None:
    # fakesnow ignores CLUSTER BY, so check the statement itself
    from retail_etl.warehouse.base import SALES_FACT_COLUMNS

    t = sql.SqlTarget("snowflake", database="retail_db", schema="retail")
    ddl = sql.create_table_sql(
        t, "sales_fact", SALES_FACT_COLUMNS, cluster_by=("sale_date", "region")
    )
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "RETAIL_DB"."RETAIL"."SALES_FACT" (')
    assert ddl.endswith('CLUSTER BY ("SALE_DATE", "REGION")')
    assert '"EXTRAS" VARIANT' in ddl and '"UNIT_PRICE" NUMBER(10,2)' in ddl
    with pytest.raises(ValueError):
        t.ident('sales"; DROP TABLE x; --')
    stage = sql.create_stage_sql(t, "retail_etl_staging", storage_integration="retail_s3")
    assert stage.count("%s") == 1 and "CREDENTIALS" not in stage  # the URL only, bound
    copy = sql.copy_into_sql(t, "stg_sales_x", "retail_etl_staging", "retail_etl_parquet", 2)
    assert "FILES = (%s, %s)" in copy and "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE" in copy


# --------------------------------------------------------------------------- loads


def test_copy_merge_and_idempotent_rerun(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    table = accepted_table("us_east", DAY, range(1, 11), batch_id=B1)
    batch = stage(tmp_path, store, table, "us_east", B1, target_file_rows=4)  # 3 files
    assert len(batch.files) == 3

    first = wh.load_region(batch)
    assert (first.staged_rows, first.inserted, first.updated, first.unchanged) == (10, 10, 0, 0)
    assert accepted_view(wh.fact_rows()) == expected(table)
    before = wh.fact_rows()

    for _ in range(3):  # same batch, same file names: FORCE makes COPY reload them
        again = wh.load_region(batch)
        assert (again.staged_rows, again.inserted, again.updated, again.unchanged) == (10, 0, 0, 10)
    assert wh.fact_rows() == before
    assert [r["status"] for r in wh.ledger()] == ["loaded"] * 4
    assert stage_tables(wh) == []  # per-batch stage tables dropped
    checks = wh.verify(B1, DAY, [again])
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_a_session_logs_in_once_and_survives_a_failed_region(
    fake_snowflake: Callable[[], Any], store: LocalStagingStore, tmp_path: Path
) -> None:
    logins: list[Any] = []

    def connect() -> Any:
        logins.append(fake_snowflake())
        return logins[-1]

    wh = SnowflakeWarehouse(connect, store, database="retail_db", schema="retail")
    wh.ensure_schema()
    east_table = accepted_table("us_east", DAY, range(1, 6), batch_id=B1)
    east = stage(tmp_path, store, east_table, "us_east", B1)
    broken = stage(tmp_path, store, accepted_table("europe", DAY, [1], batch_id=B1), "europe", B1)
    path = store.local_path(broken.files[0].key)
    assert path is not None
    path.unlink()
    logins.clear()

    with wh.session():
        assert wh.load_region(east).inserted == 5
        with pytest.raises(WarehouseLoadError, match=r"'europe'.*step 'copy'"):
            wh.load_region(broken)
        again = wh.load_region(east)  # the connection is usable after the rollback
        assert (again.inserted, again.unchanged) == (0, 5)

    assert len(logins) == 1
    assert accepted_view(wh.fact_rows()) == expected(east_table)
    assert [(r["region"], r["status"]) for r in wh.ledger()] == [("us_east", "loaded")] * 2
    assert stage_tables(wh) == []


def test_late_data_merge_counts(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    t0 = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)
    wh.load_region(
        stage(
            tmp_path,
            store,
            accepted_table("us_east", DAY, range(1, 11), batch_id=B1, updated_at=t0),
            "us_east",
            B1,
        )
    )
    europe = wh.load_region(
        stage(
            tmp_path,
            store,
            accepted_table("europe", DAY, range(1, 4), batch_id=B1, updated_at=t0),
            "europe",
            B1,
        )
    )
    assert europe.inserted == 3
    europe_before = wh.fact_rows(region="europe")

    late = pa.concat_tables(
        [
            accepted_table(
                "us_east",
                DAY,
                [6, 7, 8],
                batch_id=B2,
                updated_at=t0 + dt.timedelta(hours=1),
                price="12.00",
            ),
            # the same versions of 1..4, 9 (a re-extract of the whole day)
            accepted_table("us_east", DAY, [1, 2, 3, 4, 9], batch_id=B2, updated_at=t0),
            # a correction of 10 that kept its updated_at: lands (content differs)
            accepted_table("us_east", DAY, [10], batch_id=B2, updated_at=t0, price="99.00"),
            accepted_table(
                "us_east",
                DAY,
                [5],
                batch_id=B2,
                updated_at=t0 - dt.timedelta(hours=1),
                price="1.00",
            ),
            accepted_table("us_east", DAY, range(11, 16), batch_id=B2, updated_at=t0),
        ]
    )
    result = wh.load_region(stage(tmp_path, store, late, "us_east", B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (5, 4, 6, 0)
    rows = {r["sale_id"]: r for r in wh.fact_rows(region="us_east")}
    assert sorted(rows) == list(range(1, 16))
    assert {sid: str(rows[sid]["unit_price"]) for sid in (5, 6, 9, 10, 11)} == {
        5: "10.00",
        6: "12.00",
        9: "10.00",
        10: "99.00",
        11: "10.00",
    }
    assert wh.fact_rows(region="europe") == europe_before
    assert all(c.passed for c in wh.verify(B2, DAY, [result]))


def test_failure_between_merge_and_commit_leaves_neither(
    wh: SnowflakeWarehouse,
    store: LocalStagingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wh.load_region(
        stage(
            tmp_path, store, accepted_table("us_east", DAY, range(1, 6), batch_id=B1), "us_east", B1
        )
    )
    before = wh.fact_rows()
    batch = stage(
        tmp_path,
        store,
        accepted_table(
            "us_east",
            DAY,
            range(1, 11),
            batch_id=B2,
            updated_at=dt.datetime(2024, 1, 16, tzinfo=dt.UTC),
            price="50.00",
        ),
        "us_east",
        B2,
    )

    monkeypatch.setattr(
        sql,
        "insert_ledger_sql",
        lambda t: 'INSERT INTO "RETAIL_DB"."RETAIL"."NO_SUCH_LEDGER" VALUES (%s)',
    )
    with pytest.raises(WarehouseLoadError, match="step 'ledger'") as info:
        wh.load_region(batch)
    assert (info.value.region, info.value.batch_id) == ("us_east", B2)
    monkeypatch.undo()

    assert wh.fact_rows() == before  # the MERGE was rolled back with the failed ledger insert
    assert [r["batch_id"] for r in wh.ledger()] == [B1]
    assert stage_tables(wh) == []
    wh.record_ledger(LedgerEntry(B2, "us_east", DAY, "load_failed", error="boom"))
    assert wh.loaded_pairs(DAY, DAY) == set()

    result = wh.load_region(batch)
    assert (result.inserted, result.updated, result.unchanged) == (5, 5, 0)
    assert [r["status"] for r in wh.ledger()] == ["loaded", "load_failed", "loaded"]
    assert wh.loaded_pairs(DAY, DAY) == {("us_east", DAY)}


def test_dedup_guard_on_the_exact_merge_source(
    wh: SnowflakeWarehouse,
    store: LocalStagingStore,
    tmp_path: Path,
    fake_snowflake: Callable[[], Any],
) -> None:
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
    batch = stage(tmp_path, store, table, "us_east", B1)
    t = sql.SqlTarget("snowflake", database="retail_db", schema="retail")
    name = sql.stage_table_name("sales", B1, "us_east")

    # build the stage table exactly as load_region does (COPY from the file stage)
    conn = fake_snowflake()
    cur = conn.cursor()
    cur.execute(sql.create_table_sql(t, name, SALES_STAGE_COLUMNS, replace=True, transient=True))
    cur.execute(
        sql.copy_into_sql(t, name, wh.stage_name, wh.file_format_name, 1), [batch.files[0].key]
    )
    cur.execute(f"SELECT COUNT(*) FROM {t.table(name)}")
    assert cur.fetchone()[0] == 6  # duplicates are in the stage

    source = sql.dedup_source_sql(t, name)
    merge = sql.merge_sql(t, source)
    assert f"USING ({source}) s ON" in merge  # the MERGE uses exactly this source
    cur.execute(
        f'SELECT "REGION", "SALE_ID", COUNT(*) FROM ({source}) q '
        'GROUP BY "REGION", "SALE_ID" HAVING COUNT(*) > 1'
    )
    assert cur.fetchall() == []  # Snowflake would not raise ERROR_ON_NONDETERMINISTIC_MERGE
    cur.execute(f'SELECT "SALE_ID", "UNIT_PRICE" FROM ({source}) q ORDER BY 1')
    assert [(int(a), str(b)) for a, b in cur.fetchall()] == [
        (1, "10.00"),
        (2, "20.00"),
        (3, "20.00"),
    ]
    cur.execute(sql.drop_table_sql(t, name))
    conn.close()

    result = wh.load_region(batch)  # end to end: dropped and counted
    assert (result.staged_rows, result.duplicate_rows, result.inserted) == (6, 3, 3)
    assert [(r["sale_id"], str(r["unit_price"])) for r in wh.fact_rows()] == [
        (1, "10.00"),
        (2, "20.00"),
        (3, "20.00"),
    ]
    failed = {c.name for c in wh.verify(B1, DAY, [result]) if not c.passed}
    assert failed == {"merge_reconciles", "batch_duplicate_keys"}


def test_stage_tables_are_unique_per_batch_and_region() -> None:
    names = {
        sql.stage_table_name("sales", "20240115_3f9a2c1b7d4e", "us_east"),
        sql.stage_table_name("sales", "20240116_3f9a2c1b7d4e", "us_east"),
        sql.stage_table_name("sales", "20240115_3f9a2c1b7d4e", "europe"),
        sql.stage_table_name("rejects", "20240115_3f9a2c1b7d4e", "us_east"),
    }
    assert len(names) == 4
    assert "stg_sales_20240115_3f9a2c1b7d4e_us_east" in names


def test_missing_staged_file_fails_the_load_cleanly(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    batch = stage(
        tmp_path, store, accepted_table("us_east", DAY, [1, 2], batch_id=B1), "us_east", B1
    )
    path = store.local_path(batch.files[0].key)
    assert path is not None
    path.unlink()
    with pytest.raises(WarehouseLoadError, match="step 'copy'"):
        wh.load_region(batch)
    assert wh.fact_rows() == [] and wh.ledger() == [] and stage_tables(wh) == []


def test_rejects_dq_results_history(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    def day(batch_id: str, rejected: list[int | None]) -> RegionLoad:
        return stage_day(
            tmp_path,
            store,
            accepted_table("us_east", DAY, [20], batch_id=batch_id),
            batch_id,
            rejects=reject_table("us_east", DAY, rejected, batch_id=batch_id),
        )

    assert wh.load_region(day(B1, [1, None])).rejects == 2
    assert wh.load_region(day(B2, [7])).rejects == 1
    assert [
        (r[0], int(r[1]))
        for r in wh.query('SELECT "BATCH_ID", "SALE_ID" FROM retail_db.retail.sales_rejects')
    ] == [(B2, 7)]

    record = {
        "batch_id": B1,
        "business_date": DAY,
        "region": "*",
        "check_name": "rows",
        "measured": 5,
        "threshold": 1,
        "status": "pass",
        "detail": "ok",
        "flow_run_id": "f",
    }
    assert wh.load_dq_results([record, {**record, "check_name": "nulls"}]) == 2
    assert wh.load_dq_results([record]) == 1
    assert wh.query('SELECT "CHECK_NAME" FROM retail_db.retail.dq_results') == [("rows",)]

    wh.record_ledger(
        LedgerEntry("b0", "us_east", DAY - dt.timedelta(days=1), "loaded", rows_accepted=40)
    )
    assert wh.accepted_history("us_east", DAY, 7) == [(DAY - dt.timedelta(days=1), 40)]


# --------------------------------------------------------------------------- secrets, blocks


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
) -> SnowflakeWarehouse:
    """The warehouse from its blocks, on an S3 store whose block holds an AWS key pair."""
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    from retail_etl.staging import S3StagingStore

    connector = SnowflakeConnector(
        credentials=SnowflakeCredentials(account="acct", user="etl", password="pw"),
        database="retail_db",
        warehouse="etl_wh",
        schema="retail",
    )
    store = S3StagingStore("bkt", "staging", client=None)
    wh = SnowflakeWarehouse.from_blocks(connector, store, **kwargs)
    wh._connect = lambda: RecordingConnection(fake_snowflake(), statements)  # type: ignore[method-assign]
    return wh


def test_a_storage_integration_stage_sends_no_keys(fake_snowflake: Callable[[], Any]) -> None:
    statements: list[tuple[str, Any]] = []
    wh = _s3_warehouse(fake_snowflake, statements, storage_integration="retail_s3")
    assert wh.url == "s3://bkt/staging/"
    wh.ensure_schema()  # schema, file format, s3 stage (not read by fakesnow), tables
    (create,) = [(t, p) for t, p in statements if "CREATE OR REPLACE STAGE" in t]
    assert create[0].endswith('URL = %s STORAGE_INTEGRATION = "RETAIL_S3"')
    assert create[1] == ["s3://bkt/staging/"]
    assert "CREDENTIALS" not in " ".join(t for t, _ in statements)
    stages = wh.query("SHOW STAGES IN SCHEMA retail_db.retail")
    assert any("s3://bkt/staging/" in str(row) for row in stages)


def test_without_an_integration_the_stage_must_exist_and_keys_are_never_sent(
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


def test_from_blocks_bounds_every_session_in_time(fake_snowflake: Callable[[], Any]) -> None:
    from retail_etl.staging import S3StagingStore

    asked: list[dict[str, Any]] = []

    class Credentials:
        def get_client(self, **kwargs: Any) -> Any:
            asked.append(kwargs)
            return fake_snowflake()

    class Connector:
        credentials = Credentials()
        database, warehouse, schema_ = "retail_db", "etl_wh", "retail"

    wh = SnowflakeWarehouse.from_blocks(
        Connector(),
        S3StagingStore("bkt", "staging", client=None),
        login_timeout_s=7,
        statement_timeout_s=90,
    )
    wh.query("SELECT 1")
    (kwargs,) = asked
    assert kwargs["autocommit"] is False and kwargs["login_timeout"] == 7
    assert kwargs["network_timeout"] == 90
    assert kwargs["session_parameters"] == {"STATEMENT_TIMEOUT_IN_SECONDS": 90, "LOCK_TIMEOUT": 90}


def test_from_blocks_needs_the_s3_store(tmp_path: Path) -> None:
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    connector = SnowflakeConnector(
        credentials=SnowflakeCredentials(account="acct", user="etl", password="pw"),
        database="retail_db",
        warehouse="etl_wh",
        schema="retail",
    )
    with pytest.raises(ValueError, match="S3 staging store"):
        SnowflakeWarehouse.from_blocks(connector, LocalStagingStore(tmp_path))


# --------------------------------------------------------------------------- schema changes


def test_extras_arrive_as_variant_that_can_be_queried(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    table = accepted_table("us_east", DAY, range(1, 5), batch_id=B1)  # odd ids carry extras
    wh.load_region(stage(tmp_path, store, table, "us_east", B1))

    rows = wh.query(
        'SELECT "SALE_ID", "EXTRAS":loyalty_tier::VARCHAR FROM retail_db.retail.sales_fact '
        'ORDER BY "SALE_ID"'
    )
    tiers = [(int(i), tier) for i, tier in rows]
    assert tiers == [(1, "gold1"), (2, None), (3, "gold3"), (4, None)]


def test_a_contract_column_added_by_a_new_release_is_added_nullable_keeping_rows(
    wh: SnowflakeWarehouse,
    store: LocalStagingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from retail_etl.warehouse import base

    old_rows = accepted_table("us_east", DAY, range(1, 4), batch_id=B1)
    wh.load_region(stage(tmp_path, store, old_rows, "us_east", B1))
    before = accepted_view(wh.fact_rows())
    channel = base.WarehouseColumn("sales_channel", "VARCHAR", "VARCHAR")
    monkeypatch.setitem(base.TABLES, base.SALES_FACT, (*base.SALES_FACT_COLUMNS, channel))

    assert wh.ensure_schema() == ["sales_fact.sales_channel"]

    info = wh.query(
        "SELECT data_type, is_nullable FROM retail_db.information_schema.columns "
        "WHERE table_schema = 'RETAIL' AND table_name = 'SALES_FACT' "
        "AND column_name = 'SALES_CHANNEL'"
    )
    assert [(str(t).upper(), str(n).upper()) for t, n in info] == [("TEXT", "YES")]
    assert accepted_view(wh.fact_rows()) == before
    assert wh.query(
        'SELECT COUNT(*) FROM retail_db.retail.sales_fact WHERE "SALES_CHANNEL" IS NULL'
    ) == [(3,)]
    new_rows = accepted_table("us_east", DAY, range(4, 6), batch_id=B2)
    result = wh.load_region(stage(tmp_path, store, new_rows, "us_east", B2))
    assert result.inserted == 2
    assert wh.ensure_schema() == []


def test_schema_history_records_each_fingerprint_change_once(wh: SnowflakeWarehouse) -> None:
    columns = {"sale_id": "bigint", "channel": "text"}

    assert wh.latest_schema("us_east") is None
    assert wh.record_schema("us_east", "fp1", columns, "new column channel (text)", B1, "f1")
    assert not wh.record_schema("us_east", "fp1", columns, "new column channel (text)", B2, "f2")
    assert wh.record_schema("europe", "fp1", columns, "new column channel (text)", B2, "f2")
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


def test_fingerprints_in_the_ledger_and_fact_day_stats(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    table = accepted_table("us_east", DAY, range(1, 6), batch_id=B1)
    amount = sum(table.column("total_amount").to_pylist())
    check_fingerprints_and_day_stats(wh, stage(tmp_path, store, table, "us_east", B1), amount)


def _changed_day(tmp_path: Path, store: LocalStagingStore, batch_id: str) -> RegionLoad:
    """After a first load of 1..6: 1..3 unchanged, 4 refunded, 5 deleted, 6 gone."""
    return stage_day(
        tmp_path,
        store,
        accepted_table("us_east", DAY, [1, 2, 3], batch_id=batch_id),
        batch_id,
        retractions=pa.concat_tables(
            [
                retraction_table("us_east", DAY, [4], batch_id=batch_id),
                retraction_table("us_east", DAY, [5], reason="deleted", batch_id=batch_id),
            ]
        ),
    )


def test_retractions_in_the_load_transaction_and_idempotent_reruns(
    wh: SnowflakeWarehouse, store: LocalStagingStore, tmp_path: Path
) -> None:
    wh.load_region(
        stage_day(tmp_path, store, accepted_table("us_east", DAY, range(1, 7), batch_id=B1), B1)
    )
    wh.load_region(
        stage_day(
            tmp_path,
            store,
            accepted_table("europe", DAY, [4, 5, 6], batch_id=B1),
            B1,
            region="europe",
        )
    )
    result = wh.load_region(_changed_day(tmp_path, store, B2))

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (0, 0, 3, 3)
    assert [r["sale_id"] for r in wh.fact_rows(region="us_east")] == [1, 2, 3]
    assert len(wh.fact_rows(region="europe")) == 3
    retracted = {r["sale_id"]: r for r in wh.retractions()}
    assert {k: r["reason"] for k, r in retracted.items()} == {
        4: "status_refunded",
        5: "deleted",
        6: "missing_from_source",
    }
    as_was = json.loads(retracted[4]["row_values"])
    assert (as_was["sale_id"], as_was["batch_id"], as_was["region"]) == (4, B1, "us_east")
    assert json.loads(retracted[4]["source_values"])["status"] == "refunded"
    assert retracted[6]["source_values"] is None
    (entry,) = [e for e in wh.ledger() if e["batch_id"] == B2]
    assert (entry["rows_retracted"], entry["rows_deleted"]) == (2, 3)
    assert all(c.passed for c in wh.verify(B2, DAY, [result]))

    before = (wh.fact_rows(), wh.retractions())
    again = wh.load_region(_changed_day(tmp_path, store, "20240115_00000000000c"))
    assert (again.updated, again.unchanged, again.deleted) == (0, 3, 0)
    assert (wh.fact_rows(), wh.retractions()) == before
    assert stage_tables(wh) == []


def test_a_failure_after_the_retractions_rolls_back_the_whole_load(
    wh: SnowflakeWarehouse,
    store: LocalStagingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wh.load_region(
        stage_day(
            tmp_path,
            store,
            accepted_table("us_east", DAY, range(1, 7), batch_id=B1),
            B1,
            rejects=reject_table("us_east", DAY, [9], batch_id=B1),
        )
    )
    before = (wh.fact_rows(), wh.query('SELECT "SALE_ID" FROM retail_db.retail.sales_rejects'))
    monkeypatch.setattr(
        sql, "insert_ledger_sql", lambda t: 'INSERT INTO "NO_SUCH_LEDGER" VALUES (%s)'
    )
    with pytest.raises(WarehouseLoadError, match="step 'ledger'"):
        wh.load_region(_changed_day(tmp_path, store, B2))
    monkeypatch.undo()
    after = (wh.fact_rows(), wh.query('SELECT "SALE_ID" FROM retail_db.retail.sales_rejects'))
    assert after == before
    assert wh.retractions() == [] and stage_tables(wh) == []
    assert [e["batch_id"] for e in wh.ledger()] == [B1]
