"""Extraction against a real PostgreSQL: filters, exact types, chunking, failures."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2.sql
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_etl import extract, pg
from retail_etl.contract import extract_arrow_schema
from retail_etl.extract import extract_region
from retail_etl.fingerprint import EMPTY_DAY, read_source_stats
from retail_etl.schema import SchemaContractError
from retail_etl.source import ExtractionError
from tests.sources import create_sales, execute, sale

DAY = date(2024, 1, 15)


def _read(result) -> pa.Table:  # type: ignore[no-untyped-def]
    return pa.concat_tables(pq.read_table(f) for f in result.files)


def test_every_row_of_the_date_whatever_its_status(make_database, tmp_path):
    url = make_database("src")
    cest = timezone(timedelta(hours=2))
    rows = [
        sale(1, created_at=datetime(2024, 1, 15, 23, 30, tzinfo=cest)),  # 21:30 UTC
        sale(2, status="pending"),
        sale(3, status="cancelled"),
        sale(4, is_deleted=True),
        sale(5, sale_date=date(2024, 1, 14)),
        sale(6, sale_date=date(2024, 1, 16)),
        sale(
            7,
            discount=None,
            tax=None,
            unit_price=Decimal("12345678.99"),
            total_amount=Decimal("9999999999.99"),
        ),
        sale(8, is_deleted=None),  # unknown deletion flag: kept, never silently dropped
        sale(9, status=" Refunded"),
    ]
    create_sales(url, rows)

    result = extract_region(url, "us_east", DAY, tmp_path)

    table = _read(result)
    assert table.schema == extract_arrow_schema()
    # the transform decides what the status means (retractions): the extract reads them all
    assert sorted(table.column("sale_id").to_pylist()) == [1, 2, 3, 4, 7, 8, 9]
    assert result.rows == 7
    by_id = {r["sale_id"]: r for r in table.to_pylist()}
    assert (by_id[2]["status"], by_id[4]["is_deleted"], by_id[9]["status"]) == (
        "pending",
        True,
        " Refunded",
    )
    assert by_id[8]["is_deleted"] is None
    assert by_id[7]["unit_price"] == Decimal("12345678.99")
    assert by_id[7]["total_amount"] == Decimal("9999999999.99")
    assert by_id[7]["discount"] is None and by_id[7]["tax"] is None
    assert by_id[1]["created_at"] == datetime(2024, 1, 15, 21, 30, tzinfo=UTC)
    assert by_id[1]["created_at"].utcoffset() == timedelta(0)
    assert by_id[1]["extras"] is None
    assert result.bytes == sum(f.stat().st_size for f in result.files)
    assert set(result.source_columns) >= {"sale_id", "updated_at"}
    assert result.schema_changes == "matches the contract"


def test_chunk_boundaries_lose_and_repeat_nothing(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(i, unit_price=Decimal(i) / 100 + 1) for i in range(1, 1001)])

    result = extract_region(url, "europe", DAY, tmp_path, chunk_rows=70)

    assert len(result.files) == 15  # ceil(1000 / 70)
    assert [pq.read_metadata(f).num_rows for f in result.files][:-1] == [70] * 14
    table = _read(result)
    ids = table.column("sale_id").to_pylist()
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) == set(range(1, 1001))
    prices = {
        r["sale_id"]: r["unit_price"] for r in table.select(["sale_id", "unit_price"]).to_pylist()
    }
    assert prices[999] == Decimal("10.99")


def test_retry_replaces_previous_attempt_files(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(i) for i in range(1, 11)])
    stale = tmp_path / "region=apac" / "part-00099.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from a failed attempt")

    result = extract_region(url, "apac", DAY, tmp_path, chunk_rows=4)

    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "region=apac").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert result.rows == 10


def test_empty_day_yields_an_empty_typed_file(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1)])
    result = extract_region(url, "us_west", date(2024, 2, 1), tmp_path)
    assert result.rows == 0
    assert _read(result).schema == extract_arrow_schema()


def test_missing_table_names_region_date_and_table(make_database, tmp_path):
    url = make_database("src")
    with pytest.raises(
        ExtractionError, match=r"region europe, 2024-01-15, table sales: .*does not exist"
    ):
        extract_region(url, "europe", DAY, tmp_path)


def test_unreachable_database_error_names_region_and_hides_password(tmp_path):
    url = "postgresql+psycopg2://postgres:hunter2secret@127.0.0.1:1/nowhere"
    with pytest.raises(ExtractionError, match="region apac") as info:
        extract_region(url, "apac", DAY, tmp_path)
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in repr(info.value.__cause__)


def test_new_source_column_travels_in_extras(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1), sale(2)])
    execute(url, "ALTER TABLE sales ADD COLUMN loyalty_tier text, ADD COLUMN points int")
    execute(
        url,
        "UPDATE sales SET loyalty_tier = %s, points = 12 WHERE sale_id = 1",
        ('gold, "vip"\nplus',),
    )

    result = extract_region(url, "us_east", DAY, tmp_path)

    rows = {r["sale_id"]: r for r in _read(result).to_pylist()}
    assert json.loads(rows[1]["extras"]) == {"loyalty_tier": 'gold, "vip"\nplus', "points": 12}
    assert json.loads(rows[2]["extras"]) == {"loyalty_tier": None, "points": None}
    assert result.extra_columns == ["loyalty_tier", "points"]
    assert "new column loyalty_tier (text)" in result.schema_changes


def test_drifted_column_type_arrives_as_text_for_the_transform(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1), sale(2)])
    execute(url, "ALTER TABLE sales ALTER COLUMN quantity TYPE text")
    execute(url, "UPDATE sales SET quantity = 'two' WHERE sale_id = 2")

    result = extract_region(url, "us_east", DAY, tmp_path)

    table = _read(result)
    assert table.schema.field("quantity").type == pa.string()
    assert sorted(table.column("quantity").to_pylist()) == ["2", "two"]
    assert result.cast_columns == ["quantity"]


def test_nan_money_is_named_and_null_is_kept_apart_from_text(make_database, tmp_path):
    """NUMERIC 'NaN' cannot travel in a decimal column: it arrives as NULL and is named in
    nan_columns. SQL NULL and the texts 'NA', 'N/A', 'nan', 'NaN', 'null', '' stay apart."""
    url = make_database("src")
    texts = ["NA", "N/A", "nan", "NaN", "null", "", "\\N"]
    create_sales(
        url,
        [sale(1, discount=Decimal("NaN"), tax=Decimal("NaN")), sale(2, discount=None)]
        + [sale(10 + i) for i in range(len(texts) + 1)],
    )
    execute(url, "ALTER TABLE sales ADD COLUMN note text, ALTER COLUMN status TYPE varchar(20)")
    execute(url, "ALTER TABLE sales ALTER COLUMN customer_id TYPE text")
    for i, text in enumerate(texts):
        execute(
            url,
            "UPDATE sales SET customer_id = %s, note = %s WHERE sale_id = %s",
            (text, text, 10 + i),
        )
    execute(url, "UPDATE sales SET customer_id = NULL WHERE sale_id = %s", (10 + len(texts),))

    result = extract_region(url, "us_east", DAY, tmp_path)

    rows = {r["sale_id"]: r for r in _read(result).to_pylist()}
    assert (rows[1]["discount"], rows[1]["tax"], rows[1]["nan_columns"]) == (
        None,
        None,
        ",discount,tax,",
    )
    assert (rows[2]["discount"], rows[2]["nan_columns"]) == (None, None)  # a real NULL
    for i, text in enumerate(texts):
        assert rows[10 + i]["customer_id"] == text
        assert json.loads(rows[10 + i]["extras"]) == {"note": text}
    assert rows[10 + len(texts)]["customer_id"] is None


def test_missing_required_column_fails_naming_it(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1)])
    execute(url, "ALTER TABLE sales DROP COLUMN customer_id")
    with pytest.raises(SchemaContractError, match="region europe: required column customer_id"):
        extract_region(url, "europe", DAY, tmp_path)


def test_renamed_column_is_read_through_its_alias(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1, customer_id=555)])
    execute(url, "ALTER TABLE sales RENAME COLUMN customer_id TO customer_uuid")

    result = extract_region(
        url, "us_west", DAY, tmp_path, aliases={"customer_id": ["customer_uuid"]}
    )

    assert _read(result).column("customer_id").to_pylist() == [555]
    assert result.extra_columns == []


def test_the_copy_pipe_is_enlarged_where_the_platform_allows() -> None:
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_GETPIPE_SZ"):
        pytest.skip("no F_GETPIPE_SZ on this platform")
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    read_fd, write_fd = extract._open_pipe()
    try:
        size = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert size >= min(extract.PIPE_BYTES, limit)
    assert size > 64 * 1024 or limit <= 64 * 1024


def test_the_days_stats_are_read_in_the_extractions_snapshot(make_database, tmp_path):
    url = make_database("src")
    create_sales(url, [sale(1), sale(2, status="pending"), sale(3, sale_date=DAY - timedelta(1))])
    window = (DAY - timedelta(days=2), DAY)

    result = extract_region(url, "us_east", DAY, tmp_path, stats_window=window)

    # the same stats as the fingerprint read on its own, for every date of the window
    assert result.day_stats == read_source_stats(url, "us_east", *window)
    assert result.day_stats is not None and result.day_stats[DAY].rows == 2
    assert result.day_stats[DAY - timedelta(days=2)] == EMPTY_DAY
    assert extract_region(url, "us_east", DAY, tmp_path).day_stats is None  # not asked


def test_a_row_committed_between_the_stats_and_the_copy_is_in_neither(make_database, tmp_path):
    """The snapshot query and the COPY see one snapshot: a sale committed while the snapshot
    query runs is neither counted nor extracted (read committed would extract it, and the
    stored fingerprint would then claim a day without it)."""
    url = make_database("src")
    create_sales(url, [sale(1)])
    inserted = threading.Event()

    def insert_while_the_snapshot_query_runs() -> None:
        time.sleep(0.3)
        execute(url, "INSERT INTO sales SELECT * FROM sales WHERE sale_id = 1")
        inserted.set()

    def slow_count(cur: object) -> list[tuple[object, ...]]:
        cur.execute("SELECT count(*), pg_sleep(1.0)::text FROM sales")  # type: ignore[attr-defined]
        return list(cur.fetchall())  # type: ignore[attr-defined]

    read_fd, write_fd = os.pipe()
    producer = extract._CopyProducer(
        url,
        psycopg2.sql.SQL("COPY (SELECT sale_id FROM sales) TO STDOUT"),
        write_fd,
        before=extract.SnapshotQuery(slow_count),
    )
    writer = threading.Thread(target=insert_while_the_snapshot_query_runs)
    producer.start()
    writer.start()
    with os.fdopen(read_fd, "rb") as source:
        copied = source.read().decode().split()
    producer.join(10)
    writer.join(10)

    assert producer.error is None and inserted.is_set()
    assert producer.before_rows == [(1, "")]
    assert copied == ["1"]  # the inserted copy of sale 1 came after the snapshot
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM sales")
        assert cur.fetchone() == (2,)  # it was committed meanwhile


def test_an_extraction_past_its_deadline_fails_naming_the_region(make_database, tmp_path):
    """The extraction's own deadline (a Prefect timeout cannot interrupt a worker thread):
    checked after each block, it fails the attempt with the region, date, rows so far and the
    setting to change; within it, the same extraction succeeds."""
    url = make_database("us_east")
    create_sales(url, [sale(i) for i in range(1, 4)])

    def slow_block(rows: int) -> None:  # a source that streams slowly
        time.sleep(0.3)

    with pytest.raises(
        ExtractionError,
        match=r"region us_east, 2024-01-15, table sales: extraction exceeded its 0.2 s limit "
        r"after 3 rows \(RETAIL_ETL_EXTRACT_TIMEOUT_SECONDS\)",
    ):
        extract_region(url, "us_east", DAY, tmp_path, on_rows=slow_block, deadline_seconds=0.2)
    done = extract_region(url, "us_east", DAY, tmp_path, on_rows=slow_block, deadline_seconds=60)
    assert done.rows == 3
