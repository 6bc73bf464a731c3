"""The synthetic source generator, against the real PostgreSQL: volume, dirt, manifest, determinism."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest

from retail_etl import pg, seed
from retail_etl.contract import CRITICAL_COLUMNS
from retail_etl.settings import InvalidIdentifierError, database_url

REGIONS = ("us_east", "europe")
START = date(2024, 1, 15)
DAYS = 2
ROWS = 10_000
DATES = [START + timedelta(days=n) for n in range(DAYS)]

EXTRACTABLE = "status = 'completed' AND NOT is_deleted AND sale_date = %(d)s"

# Independent classification of every row of one date, with the transform's reject vocabulary.
# A duplicate loser is every extractable version of a sale_id but the latest updated_at.
CLASSIFY_SQL = f"""
WITH extractable AS (
    SELECT s.*, row_number() OVER (PARTITION BY sale_id ORDER BY updated_at DESC) AS version
    FROM sales s WHERE {EXTRACTABLE}
), reasons AS (
    SELECT array_remove(ARRAY[
        CASE WHEN version > 1 THEN 'duplicate' END,
        CASE WHEN customer_id IS NULL THEN 'null_customer_id' END,
        CASE WHEN store_id IS NULL THEN 'null_store_id' END,
        CASE WHEN product_id IS NULL THEN 'null_product_id' END,
        CASE WHEN quantity IS NULL THEN 'null_quantity' END,
        CASE WHEN unit_price IS NULL THEN 'null_unit_price' END,
        CASE WHEN total_amount IS NULL THEN 'null_total_amount' END,
        CASE WHEN quantity <= 0 THEN 'quantity_not_positive' END,
        CASE WHEN unit_price <= 0 THEN 'unit_price_not_positive' END,
        -- Deliberately unguarded: zero quantities/prices carry total 0, which is in range.
        CASE WHEN total_amount NOT BETWEEN 0.5 * quantity * unit_price AND 2 * quantity * unit_price
             THEN 'total_amount_out_of_range' END
    ], NULL) AS reasons, discount, tax
    FROM extractable
)
SELECT coalesce(reason, 'clean'), count(*) FROM reasons
LEFT JOIN LATERAL unnest(reasons) AS r(reason) ON true
GROUP BY 1
UNION ALL SELECT 'rows_with_several_reasons', count(*) FROM reasons WHERE cardinality(reasons) > 1
UNION ALL SELECT 'null_discount', count(*) FROM reasons
    WHERE discount IS NULL AND cardinality(reasons) = 0
UNION ALL SELECT 'null_tax', count(*) FROM reasons WHERE tax IS NULL AND cardinality(reasons) = 0
UNION ALL SELECT 'deleted', count(*) FROM sales
    WHERE sale_date = %(d)s AND is_deleted AND status = 'completed'
UNION ALL SELECT 'not_completed', count(*) FROM sales
    WHERE sale_date = %(d)s AND status <> 'completed' AND NOT is_deleted
UNION ALL SELECT 'late_inserted', count(*) FROM sales
    WHERE sale_date = %(d)s AND (created_at AT TIME ZONE 'UTC')::date > sale_date
UNION ALL SELECT 'updated_after_creation', count(*) FROM sales
    WHERE sale_date = %(d)s AND updated_at > created_at
"""

TABLE_MD5_SQL = (
    "SELECT md5(string_agg(s::text, ',' ORDER BY sale_id, updated_at, s::text)) FROM sales s"
)


def query(
    url: str, statement: str, params: Mapping[str, object] | None = None
) -> list[tuple[Any, ...]]:
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params or {})
        return cur.fetchall()


def scalar(url: str, statement: str, params: Mapping[str, object] | None = None) -> Any:
    return query(url, statement, params)[0][0]


@dataclass
class Seeded:
    urls: dict[str, str]
    summaries: list[seed.SeedSummary]
    progress: list[str]


@pytest.fixture(scope="module")
def seeded(pg_server_url: str) -> Iterator[Seeded]:
    """Two regions x two days x 10,000 rows, seeded once for the module, dropped after."""
    prefix = f"retail_t{uuid.uuid4().hex[:10]}_"
    lines: list[str] = []
    try:
        summaries = seed.seed_regions(
            pg_server_url,
            REGIONS,
            START,
            DAYS,
            ROWS,
            database_for_region=lambda region: prefix + region,
            progress=lines.append,
        )
        urls = {region: database_url(pg_server_url, prefix + region) for region in REGIONS}
        yield Seeded(urls=urls, summaries=summaries, progress=lines)
    finally:
        for region in REGIONS:
            pg.drop_database(pg_server_url, prefix + region)


def test_summaries_and_progress(seeded: Seeded) -> None:
    assert [s.region for s in seeded.summaries] == list(REGIONS)
    assert all(s.rows == ROWS * DAYS for s in seeded.summaries)
    assert all(s.database.endswith(s.region) and s.seconds > 0 for s in seeded.summaries)
    assert len(seeded.progress) == len(REGIONS) * DAYS
    assert any(
        line.startswith("us_east: day 2/2 (2024-01-16), 20,000 rows, ") for line in seeded.progress
    )


@pytest.mark.parametrize("region", REGIONS)
def test_exactly_rows_per_region_per_date(seeded: Seeded, region: str) -> None:
    counts = query(seeded.urls[region], "SELECT sale_date, count(*) FROM sales GROUP BY 1")
    assert dict(counts) == dict.fromkeys(DATES, ROWS)


@pytest.mark.parametrize("region", REGIONS)
def test_sale_date_index_exists(seeded: Seeded, region: str) -> None:
    defs = query(seeded.urls[region], "SELECT indexdef FROM pg_indexes WHERE tablename = 'sales'")
    assert any("(sale_date)" in d for (d,) in defs)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("day", DATES)
def test_every_kind_of_dirt_is_present(seeded: Seeded, region: str, day: date) -> None:
    url, p = seeded.urls[region], {"d": day}
    for column in (
        "customer_id",
        "store_id",
        "product_id",
        "quantity",
        "unit_price",
        "total_amount",
    ):
        nulls = scalar(
            url, f"SELECT count(*) FROM sales WHERE {EXTRACTABLE} AND {column} IS NULL", p
        )
        assert nulls > 0, column
    for condition in (
        "quantity <= 0",
        "unit_price <= 0",
        "quantity > 0 AND unit_price > 0 AND total_amount NOT BETWEEN "
        "0.5 * quantity * unit_price AND 2 * quantity * unit_price",
        "discount IS NULL",
        "tax IS NULL",
    ):
        assert (
            scalar(url, f"SELECT count(*) FROM sales WHERE {EXTRACTABLE} AND {condition}", p) > 0
        ), condition
    duplicated = scalar(
        url,
        f"SELECT count(*) FROM (SELECT sale_id FROM sales WHERE {EXTRACTABLE}"
        " GROUP BY sale_id HAVING count(*) > 1) d",
        p,
    )
    assert duplicated > 0
    statuses = query(url, "SELECT DISTINCT status FROM sales WHERE sale_date = %(d)s", p)
    assert {s for (s,) in statuses} == {"completed", "pending", "cancelled", "refunded"}
    assert scalar(url, "SELECT count(*) FROM sales WHERE sale_date = %(d)s AND is_deleted", p) > 0
    late = scalar(
        url,
        "SELECT count(*) FROM sales WHERE sale_date = %(d)s"
        " AND (created_at AT TIME ZONE 'UTC')::date > sale_date",
        p,
    )
    assert late > 0
    updated = scalar(
        url, "SELECT count(*) FROM sales WHERE sale_date = %(d)s AND updated_at > created_at", p
    )
    assert updated > 0
    early = scalar(
        url,
        "SELECT count(*) FROM sales WHERE sale_date = %(d)s"
        " AND ((created_at AT TIME ZONE 'UTC')::date < sale_date"
        " OR updated_at < created_at)",
        p,
    )
    assert early == 0


@pytest.mark.parametrize("region", REGIONS)
def test_duplicates_are_older_versions_of_a_clean_sale(seeded: Seeded, region: str) -> None:
    url = seeded.urls[region]
    groups = query(
        url,
        """
        SELECT sale_id, count(*), count(DISTINCT sale_date), count(DISTINCT updated_at),
               bool_and(status = 'completed' AND NOT is_deleted),
               count(DISTINCT created_at)
        FROM sales GROUP BY sale_id HAVING count(*) > 1""",
    )
    assert groups
    assert all(g[1:] == (2, 1, 2, True, 1) for g in groups)
    # The latest version of every duplicated sale is valid, so only the older one is rejected.
    bad_winners = scalar(
        url,
        """
        SELECT count(*) FROM (
            SELECT DISTINCT ON (sale_id) * FROM sales
            WHERE sale_id IN (SELECT sale_id FROM sales GROUP BY sale_id HAVING count(*) > 1)
            ORDER BY sale_id, updated_at DESC) w
        WHERE customer_id IS NULL OR store_id IS NULL OR product_id IS NULL
           OR quantity IS NULL OR quantity <= 0 OR unit_price IS NULL OR unit_price <= 0
           OR total_amount IS NULL
           OR total_amount NOT BETWEEN 0.5 * quantity * unit_price AND 2 * quantity * unit_price
           OR updated_at <= created_at""",
    )
    assert bad_winners == 0


def test_sale_ids_overlap_across_regions(seeded: Seeded) -> None:
    ids = {
        region: {
            row[0]
            for row in query(url, "SELECT sale_id FROM sales WHERE sale_date = %(d)s", {"d": START})
        }
        for region, url in seeded.urls.items()
    }
    shared = ids["us_east"] & ids["europe"]
    assert shared
    assert ids["us_east"] != ids["europe"]
    # Within a region, sale ids of different dates never collide.
    for url in seeded.urls.values():
        assert (
            scalar(
                url,
                "SELECT count(*) FROM (SELECT sale_id FROM sales GROUP BY sale_id"
                " HAVING count(DISTINCT sale_date) > 1) x",
            )
            == 0
        )


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("day", DATES)
def test_manifest_matches_independent_counts(seeded: Seeded, region: str, day: date) -> None:
    url = seeded.urls[region]
    measured = dict(query(url, CLASSIFY_SQL, {"d": day}))
    assert measured.pop("rows_with_several_reasons") == 0
    manifest = seed.planted_dirt(url, day)
    assert set(manifest) == set(seed.MANIFEST_KINDS)
    assert {kind: n for kind, n in manifest.items() if n} == {
        kind: n for kind, n in measured.items() if n
    }
    assert all(manifest[kind] > 0 for kind in seed.MANIFEST_KINDS)
    assert sum(manifest[kind] for kind in seed.ROW_KINDS) == ROWS


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("day", DATES)
def test_dirt_stays_under_the_quality_gate(seeded: Seeded, region: str, day: date) -> None:
    url, p = seeded.urls[region], {"d": day}
    extractable = scalar(url, f"SELECT count(*) FROM sales WHERE {EXTRACTABLE}", p)
    assert 0.85 * ROWS < extractable < 0.95 * ROWS
    for column in CRITICAL_COLUMNS:
        nulls = scalar(
            url, f"SELECT count(*) FROM sales WHERE {EXTRACTABLE} AND {column} IS NULL", p
        )
        assert nulls / extractable < 0.01, column
    manifest = seed.planted_dirt(url, day)
    rejects = sum(manifest[kind] for kind in seed.REJECT_KINDS)
    assert 0.01 < rejects / extractable < 0.05
    assert manifest["clean"] == extractable - rejects


@pytest.mark.parametrize("region", REGIONS)
def test_clean_rows_are_realistic(seeded: Seeded, region: str) -> None:
    url = seeded.urls[region]
    stats = query(
        url,
        """
        WITH clean AS (
            SELECT *, quantity * unit_price AS gross FROM sales s
            WHERE status = 'completed' AND NOT is_deleted
              AND customer_id IS NOT NULL AND store_id IS NOT NULL AND product_id IS NOT NULL
              AND quantity > 0 AND unit_price > 0 AND total_amount IS NOT NULL
        )
        SELECT min(unit_price), max(unit_price), min(quantity), max(quantity),
               avg((quantity = 1)::int),
               count(*) FILTER (WHERE discount > 0.2 * gross + 0.005 OR discount < 0),
               count(*) FILTER (WHERE discount > 0)::float / count(*),
               min(tax / (gross - discount)) FILTER (WHERE gross - discount > 100),
               max(tax / (gross - discount)) FILTER (WHERE gross - discount > 100),
               count(*) FILTER (WHERE total_amount
                   <> gross - coalesce(discount, 0) + coalesce(tax, 0)
                   AND total_amount BETWEEN 0.5 * gross AND 2 * gross),
               count(DISTINCT store_id), count(DISTINCT product_id),
               min(extract(hour FROM created_at AT TIME ZONE 'UTC')),
               max(extract(hour FROM created_at AT TIME ZONE 'UTC'))
        FROM clean""",
    )[0]
    (
        min_price,
        max_price,
        min_qty,
        max_qty,
        share_qty_one,
        bad_discounts,
        discounted,
        min_tax,
        max_tax,
        inconsistent,
        stores,
        products,
        first_hour,
        last_hour,
    ) = stats
    assert 0.8 < min_price < 10 and 500 < max_price <= 999.99
    assert (min_qty, max_qty) == (1, 10) and share_qty_one > 0.3
    assert bad_discounts == 0 and 0.2 < discounted < 0.4
    assert 0.04 < min_tax <= max_tax < 0.21 and max_tax - min_tax < 0.01  # one rate per region
    assert inconsistent == 0
    assert 40 <= stores < 120 and products > 1_000
    assert first_hour >= 8 and last_hour < 22


def test_regions_get_different_data(seeded: Seeded) -> None:
    md5s = {scalar(url, TABLE_MD5_SQL) for url in seeded.urls.values()}
    assert len(md5s) == len(REGIONS)
    tax_rates = {
        round(
            float(
                scalar(
                    url,
                    "SELECT avg(tax / (quantity * unit_price - discount)) FROM sales"
                    " WHERE tax > 0 AND discount = 0 AND quantity > 0",
                )
            ),
            3,
        )
        for url in seeded.urls.values()
    }
    assert len(tax_rates) == len(REGIONS)


def test_same_seed_gives_identical_data_other_seed_differs(
    seeded: Seeded,
    pg_server_url: str,
    unique_prefix: str,
    drop_prefixed_databases: Callable[[str], None],
) -> None:
    drop_prefixed_databases(unique_prefix)
    again, other = unique_prefix + "again", unique_prefix + "other"

    def reseed(database: str, seed_value: int) -> str:
        seed.seed_region(pg_server_url, database, "us_east", START, DAYS, ROWS, seed=seed_value)
        return database_url(pg_server_url, database)

    original = scalar(seeded.urls["us_east"], TABLE_MD5_SQL)
    assert scalar(reseed(again, 42), TABLE_MD5_SQL) == original
    # replace=True (the default) recreates the database instead of appending.
    assert scalar(reseed(again, 42), TABLE_MD5_SQL) == original
    manifest_sql = (
        "SELECT md5(string_agg(m::text, ',' ORDER BY sale_date, kind)) FROM seed_manifest m"
    )
    assert scalar(database_url(pg_server_url, again), manifest_sql) == scalar(
        seeded.urls["us_east"], manifest_sql
    )
    assert scalar(reseed(other, 7), TABLE_MD5_SQL) != original


def test_is_seeded(seeded: Seeded, pg_server_url: str, make_database: Callable[[str], str]) -> None:
    url = seeded.urls["us_east"]
    assert seed.is_seeded(url, START, DAYS)
    assert seed.is_seeded(url, START + timedelta(days=1), 1)
    assert not seed.is_seeded(url, START, DAYS + 1)
    assert not seed.is_seeded(url, START - timedelta(days=1), 1)
    missing = database_url(pg_server_url, f"retail_t{uuid.uuid4().hex[:10]}_missing")
    assert not seed.is_seeded(missing, START, 1)
    assert not seed.is_seeded(make_database("empty"), START, 1)


def test_planted_dirt_errors(seeded: Seeded, make_database: Callable[[str], str]) -> None:
    with pytest.raises(seed.SeedError, match="2024-02-01"):
        seed.planted_dirt(seeded.urls["us_east"], date(2024, 2, 1))
    with pytest.raises(seed.SeedError, match="seed_manifest"):
        seed.planted_dirt(make_database("empty"), START)


def test_refuses_to_overwrite_without_replace(
    pg_server_url: str, make_database: Callable[[str], str]
) -> None:
    url = make_database("keep")
    database = url.rsplit("/", 1)[1]
    with pytest.raises(seed.SeedError, match=database):
        seed.seed_region(pg_server_url, database, "us_east", START, 1, 10, replace=False)
    assert scalar(url, "SELECT to_regclass('sales') IS NULL") is True


def test_rejects_bad_arguments(pg_server_url: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        seed.seed_region(pg_server_url, "retail_x", "US-East", START, 1, 10)
    with pytest.raises(InvalidIdentifierError):
        seed.seed_region(pg_server_url, "retail; drop", "us_east", START, 1, 10)
    with pytest.raises(ValueError, match="rows_per_region"):
        seed.seed_region(pg_server_url, "retail_x", "us_east", START, 1, 0)
    with pytest.raises(ValueError, match="days"):
        seed.seed_regions(
            pg_server_url, ["us_east"], START, 0, 10, database_for_region=lambda r: f"retail_{r}"
        )
    with pytest.raises(ValueError, match="share a database"):
        seed.seed_regions(
            pg_server_url,
            ["us_east", "europe"],
            START,
            1,
            10,
            database_for_region=lambda r: "retail_same",
        )
    with pytest.raises(InvalidIdentifierError):
        seed.seed_regions(
            pg_server_url, ["us_east"], START, 1, 10, database_for_region=lambda r: "Retail-" + r
        )
