"""Source fingerprints (real PostgreSQL) and the drift planning built on them (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg2 import sql

from retail_etl import pg
from retail_etl.backfill import LedgerState, drifted_pairs, plan_changed
from retail_etl.fingerprint import EMPTY_DAY, read_source_stats
from tests.sources import create_sales, execute, sale

D = date(2024, 1, 15)
D2 = D + timedelta(days=1)


def _fingerprints(url: str) -> dict[date, str]:
    return {d: s.fingerprint for d, s in read_source_stats(url, "us_east", D, D2).items()}


def test_every_kind_of_late_change_changes_the_day_and_only_that_day(make_database):
    url = make_database("fp")
    create_sales(
        url,
        [
            *(sale(n) for n in (1, 2, 3, 4)),
            sale(5, sale_date=D2),
            sale(6, status="cancelled"),
            sale(7, is_deleted=True),
        ],
    )
    stats = read_source_stats(url, "us_east", D, D2, live=True)
    assert read_source_stats(url, "us_east", D, D2)[D].live_rows is None  # runs do not ask
    assert (stats[D].rows, stats[D].live_rows, stats[D2].rows) == (6, 4, 1)
    assert stats[D].live_amount == Decimal("82.84")  # 4 x 20.71, the cancelled/deleted not
    assert stats[D].total_amount == Decimal("124.26")  # every row
    baseline = _fingerprints(url)
    assert _fingerprints(url) == baseline  # stable

    changes = [
        ("refund", "UPDATE sales SET status = 'refunded' WHERE sale_id = 1"),
        ("soft delete", "UPDATE sales SET is_deleted = true WHERE sale_id = 2"),
        ("hard delete", "DELETE FROM sales WHERE sale_id = 3"),
        ("same updated_at amount fix", "UPDATE sales SET tax = 1.70 WHERE sale_id = 4"),
        ("same updated_at correction", "UPDATE sales SET customer_id = 99 WHERE sale_id = 4"),
        (
            "late insert",
            "INSERT INTO sales SELECT 8, customer_id, store_id, product_id, "
            "quantity, unit_price, discount, tax, total_amount, sale_date, status, is_deleted, "
            "created_at, updated_at FROM sales WHERE sale_id = 4",
        ),
        ("undelete", "UPDATE sales SET is_deleted = false WHERE sale_id = 7"),
    ]
    seen = {baseline[D]}
    for what, statement in changes:
        execute(url, statement)
        now = _fingerprints(url)
        assert now[D] not in seen, what
        assert now[D2] == baseline[D2], what  # the other day is untouched
        seen.add(now[D])


def _autocommit(url: str, statement: str) -> None:
    with pg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(statement)  # VACUUM cannot run inside a transaction


def test_a_tables_fingerprint_is_its_row_versions_vacuum_keeps_it(make_database):
    """A table is fingerprinted by its rows' versions: VACUUM, VACUUM FREEZE and ANALYZE keep
    the fingerprint (no day is reprocessed for maintenance); an UPDATE that sets the same
    values makes a new version, so the day is reprocessed once and found unchanged (a false
    alarm, never a missed change)."""
    url = make_database("fpver")
    create_sales(url, [sale(n) for n in (1, 2, 3)])
    execute(url, "DELETE FROM sales WHERE sale_id = 3")  # a dead version for VACUUM to remove
    before = _fingerprints(url)
    for maintenance in ("VACUUM sales", "VACUUM (FREEZE) sales", "ANALYZE sales"):
        _autocommit(url, maintenance)
        assert _fingerprints(url) == before, maintenance
    execute(url, "UPDATE sales SET tax = tax WHERE sale_id = 1")
    assert _fingerprints(url)[D] != before[D]
    assert _fingerprints(url)[D2] == before[D2]


def test_a_partitioned_tables_fingerprint_is_its_partitions_row_versions(make_database):
    """A partitioned table is fingerprinted by its partitions' row versions (told apart by
    ``tableoid``): stable, changed by a new version with the same values, a correction that
    keeps ``updated_at`` and a move of a sale to another day's partition."""
    url = make_database("fppart")
    create_sales(url, [sale(1), sale(2), sale(3, sale_date=D2)], table="sales_rows")
    execute(
        url,
        "CREATE TABLE sales (LIKE sales_rows) PARTITION BY RANGE (sale_date); "
        "CREATE TABLE sales_d1 PARTITION OF sales FOR VALUES FROM ('2024-01-15') TO ('2024-01-16'); "
        "CREATE TABLE sales_d2 PARTITION OF sales FOR VALUES FROM ('2024-01-16') TO ('2024-01-17'); "
        "INSERT INTO sales SELECT * FROM sales_rows",
    )
    before = _fingerprints(url)
    assert _fingerprints(url) == before
    assert read_source_stats(url, "us_east", D, D2)[D].rows == 2
    execute(url, "UPDATE sales SET tax = tax WHERE sale_id = 1")  # a new version, same values
    touched = _fingerprints(url)
    assert touched[D] != before[D] and touched[D2] == before[D2]  # versions, not columns
    execute(url, "UPDATE sales SET customer_id = 99 WHERE sale_id = 1")  # same updated_at
    corrected = _fingerprints(url)
    assert corrected[D] != touched[D] and corrected[D2] == before[D2]
    execute(url, "UPDATE sales SET sale_date = %s WHERE sale_id = 2", (D2,))
    moved = _fingerprints(url)
    assert moved[D] != corrected[D] and moved[D2] != corrected[D2]


def test_a_view_is_fingerprinted_by_every_column_of_its_rows(make_database):
    """A view has no row versions: its rows' columns are hashed, so the same kinds of change
    are found, and a rewrite of the table underneath that changes no value is not one."""
    url = make_database("fpview")
    create_sales(url, [sale(1), sale(2)], table="sales_base")
    execute(url, "CREATE VIEW sales AS SELECT * FROM sales_base")
    before = _fingerprints(url)
    assert _fingerprints(url) == before  # stable
    _autocommit(url, "VACUUM FULL sales_base")
    execute(url, "UPDATE sales_base SET tax = tax WHERE sale_id = 1")  # same values
    assert _fingerprints(url) == before
    execute(url, "UPDATE sales_base SET customer_id = 99 WHERE sale_id = 2")  # same updated_at
    assert _fingerprints(url)[D] != before[D]


def test_the_fingerprint_does_not_depend_on_the_session_timezone(make_database, monkeypatch):
    url = make_database("fptz")
    create_sales(url, [sale(1, updated_at=datetime(2024, 1, 15, 23, 30, tzinfo=UTC))])
    utc = _fingerprints(url)
    with pg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        (name,) = cur.fetchone()
        cur.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Tokyo'").format(sql.Identifier(name))
        )
    assert _fingerprints(url) == utc


def test_an_empty_day_and_a_missing_table(make_database):
    url = make_database("fpempty")
    create_sales(url, [sale(1)])
    assert read_source_stats(url, "us_east", D2, D2) == {D2: EMPTY_DAY}
    with pytest.raises(RuntimeError, match=r"region us_east, 2024-01-15\.\.2024-01-16, table nope"):
        read_source_stats(url, "us_east", D, D2, table="nope")


def test_drift_is_a_changed_fingerprint_or_a_deferred_or_failed_pair():
    ledger = {
        ("us_east", D): LedgerState("loaded", "aaa"),
        ("us_west", D): LedgerState("loaded", "bbb"),
        ("europe", D): LedgerState("deferred"),
        ("apac", D): LedgerState("extract_failed"),
        ("us_east", D2): LedgerState("loaded", None),  # loaded before fingerprints existed
        ("us_west", D2): LedgerState("loaded", "ccc"),  # its source could not be read
    }
    source = {("us_east", D): "aaa", ("us_west", D): "changed", ("us_east", D2): "x"}
    assert drifted_pairs(ledger, source) == {
        ("us_west", D): "source changed since its load",
        ("europe", D): "latest ledger status deferred",
        ("apac", D): "latest ledger status extract_failed",
        ("us_east", D2): "loaded without a source fingerprint",
    }


def test_changed_only_plan_runs_the_drifted_pairs_by_date():
    class Stats:
        def __init__(self, fingerprint: str) -> None:
            self.fingerprint = fingerprint

    ledger = {
        ("us_east", D): LedgerState("loaded", "a"),
        ("europe", D): LedgerState("loaded", "b"),
        ("europe", D2): LedgerState("loaded", "c"),
    }
    stats = {
        "us_east": {D: Stats("a"), D2: Stats("never-run")},
        "europe": {D: Stats("b2"), D2: Stats("c")},
    }
    plan, reasons = plan_changed(D, D2, ["us_east", "europe"], ledger, stats)
    assert [(d.run_date, d.regions, d.skipped) for d in plan] == [
        (D, ("europe",), ("us_east",)),
        (D2, (), ("us_east", "europe")),  # us_east D2 never ran: --missing-only's job
    ]
    assert reasons == {("europe", D): "source changed since its load"}
    both, _ = plan_changed(
        D, D2, ["us_east", "europe"], ledger, stats, missing_only=True, loaded=set(ledger)
    )
    assert [d.regions for d in both] == [("europe",), ("us_east",)]
