"""Synthetic regional sources: deterministic, realistic and deliberately dirty ``sales`` data.

``retail-etl seed --start-date D --days K --rows-per-region N`` calls :func:`seed_regions`, which
creates one PostgreSQL database per region and fills its ``sales`` table (the contract table,
:func:`retail_etl.contract.create_table_ddl`, no keys or constraints) for K consecutive dates.

Volume: ``rows_per_region`` is the number of rows in ``sales`` per region **per day**, every row
counted (clean, dirty, deleted and non-completed alike). K days give exactly K x N rows per region.

Generation happens inside PostgreSQL: one ``INSERT ... SELECT FROM generate_series`` per
(region, day). Every value is derived from ``hashint8extended(i, key)`` of the row number ``i``
and a key hashed (BLAKE2b, in Python) from ``(seed, region, date)``; there is no ``random()``,
and money, quantities and times are computed with integer/NUMERIC arithmetic, so the same seed
gives byte-identical data, while each region gets its own data under the same seed.

Realism, per region (derived from the seed and the region name): a price level (0.90-1.15 x the
shared catalog price, prices 0.89-999.99), a sales-tax rate (5-20 %), its own store-id range
(40-119 stores, a few large ones) and customer-id range (100K-500K customers, loyal customers buy
more); products 1-20000 from one catalog shared by the regions, popular products sell more;
quantity 1-10 skewed to 1; 30 % of sales carry a 0-20 % discount; total_amount = gross - discount
+ tax rounded to cents; sales happen 08:00-22:00 UTC on the sale date.

Kinds of rows. Each row has exactly one *row kind*; shares are of all rows of a day and are
approximate (the hash decides per row), except that the manifest records the exact counts:

====================================  ========  ===============================================
kind                                  share     what the row looks like
====================================  ========  ===============================================
not_completed                         ~5 %      status pending / cancelled / refunded (40/35/25)
deleted                               ~3 %      status completed, ``is_deleted`` true
duplicate                             ~0.8 %    older version of the sale in the row before it:
                                                same sale_id and sale_date, updated_at = created_at
                                                < the newer row's updated_at (the newer one wins)
null_customer_id                      ~0.3 %    customer_id NULL
null_store_id, null_product_id,       ~0.1 %    that column NULL
null_quantity, null_unit_price,       each
null_total_amount
quantity_not_positive                 ~0.2 %    quantity 0 (discount, tax, total 0.00)
unit_price_not_positive               ~0.2 %    unit_price 0.00 (discount, tax, total 0.00)
total_amount_out_of_range             ~0.3 %    total 0.10-0.40 x or 2.5-10 x quantity x price
clean                                 the rest  valid; the row the pipeline accepts
====================================  ========  ===============================================

Every reject kind is planted only on *extractable* rows (status 'completed', not deleted, the
sale date), one kind per row, and zero quantities/prices are used so that no row trips a second
reject rule; so the rejects the transform must report per reason are exactly the manifest's
counts. About 2.5 % of extractable rows are rejects; no critical column is NULL in more than
~0.35 % of them. Row kinds (``ROW_KINDS``) partition the day's rows.

Attributes, counted separately (a row may have several):

* ``null_discount`` (~2 % of clean rows) / ``null_tax`` (~1 % of clean rows): the column is
  NULL, not a reject (the pipeline reads it as 0; the total was computed with 0);
* ``late_inserted`` (~3 % of all rows): created_at 1-3 days after the sale date;
* ``updated_after_creation`` (~8 % of rows, plus every deleted, cancelled or refunded row and
  every row that has an older duplicate): updated_at later than created_at.

sale_id is ``days since 2000-01-01 x 10^8 + region offset + row number``: unique per region apart
from the planted duplicates, and the id ranges of different regions overlap (the same sale_id
exists in several regions).

Each region database also holds ``seed_manifest(sale_date, kind, rows)``, the counts the
generator planted per date for every kind in ``MANIFEST_KINDS`` (zeros included), computed from
the generator's own per-row plan, independently of the pipeline; read it with
:func:`planted_dirt`. For ``duplicate`` the count is the number of losing (older) rows.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values
from sqlalchemy.engine import make_url

from retail_etl import contract, pg
from retail_etl.settings import database_url, validate_identifier

MANIFEST_TABLE = "seed_manifest"
SALE_DATE_INDEX = "sales_sale_date_idx"

REJECT_KINDS: tuple[str, ...] = (
    "duplicate",
    "null_customer_id",
    "null_store_id",
    "null_product_id",
    "null_quantity",
    "null_unit_price",
    "null_total_amount",
    "quantity_not_positive",
    "unit_price_not_positive",
    "total_amount_out_of_range",
)
# Exactly one per row; their counts add up to the day's rows.
ROW_KINDS: tuple[str, ...] = ("clean", "not_completed", "deleted", *REJECT_KINDS)
# Counted separately; a row may have any number of them.
ATTRIBUTE_KINDS: tuple[str, ...] = (
    "null_discount",
    "null_tax",
    "late_inserted",
    "updated_after_creation",
)
MANIFEST_KINDS: tuple[str, ...] = (*ROW_KINDS, *ATTRIBUTE_KINDS)

# Share of all rows of a day per planted row kind (before pairing duplicates, which shifts the
# effective shares by ~1.6 %). Order matters only for the hash bands, not for the shares.
BAND_RATES: tuple[tuple[str, float], ...] = (
    ("not_completed", 0.05),
    ("deleted", 0.03),
    ("null_customer_id", 0.003),
    ("null_store_id", 0.001),
    ("null_product_id", 0.001),
    ("null_quantity", 0.001),
    ("null_unit_price", 0.001),
    ("null_total_amount", 0.001),
    ("quantity_not_positive", 0.002),
    ("unit_price_not_positive", 0.002),
    ("total_amount_out_of_range", 0.003),
)
DUPLICATE_RATE = 0.008  # losing rows per row (only even rows can be one: band of 2x on them)
STATUS_SHARES: tuple[tuple[str, float], ...] = (
    ("pending", 0.40),
    ("cancelled", 0.35),
    ("refunded", 0.25),
)
LATE_RATE = 0.03
UPDATED_RATE = 0.08
NULL_DISCOUNT_RATE = 0.02  # of clean rows
NULL_TAX_RATE = 0.01  # of clean rows
DISCOUNTED_SHARE = 0.30
PRODUCTS = 20_000
MAX_ROWS_PER_REGION = 50_000_000  # keeps sale ids of different days apart (10^8 per day)
_SALE_ID_DAY_STRIDE = 100_000_000
_SALE_ID_EPOCH = date(2000, 1, 1)


class SeedError(RuntimeError):
    """Seeding a region's source database failed, or its manifest is missing."""


@dataclass
class SeedSummary:
    """What :func:`seed_region` created."""

    region: str
    database: str
    rows: int
    seconds: float


@dataclass(frozen=True)
class _RegionProfile:
    """Per-region constants, deterministic in (seed, region)."""

    price_level_bp: int  # basis points of the shared catalog price
    tax_bp: int  # sales tax, basis points
    store_base: int
    store_count: int
    customer_base: int
    customer_count: int
    sale_id_offset: int


def _hash64(*parts: object, signed: bool = False) -> int:
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=signed)


def _region_profile(seed: int, region: str, rows_per_region: int) -> _RegionProfile:
    def pick(label: str, modulus: int) -> int:
        return _hash64(seed, region, label) % modulus

    return _RegionProfile(
        price_level_bp=9_000 + 100 * pick("price_level", 26),  # 0.90 .. 1.15
        tax_bp=500 + pick("tax_rate", 1501),  # 5.00 % .. 20.00 %
        store_base=(10 + pick("store_base", 90)) * 1_000,
        store_count=40 + pick("store_count", 80),
        customer_base=(100 + pick("customer_base", 900)) * 1_000_000,
        customer_count=100_000 + pick("customer_count", 400_001),
        sale_id_offset=pick("sale_id_offset", max(1, rows_per_region // 2)),
    )


def _day_params(
    seed: int, region: str, day: date, rows_per_region: int, profile: _RegionProfile
) -> dict[str, object]:
    """Bound parameters of the plan and insert statements for one (region, day)."""
    params: dict[str, object] = {
        "key": _hash64(seed, region, day.isoformat(), signed=True),
        "catalog_key": _hash64(seed, "catalog", signed=True),
        "n": rows_per_region,
        "sale_date": day,
        "day_start": datetime(day.year, day.month, day.day, tzinfo=UTC),
        "sale_id_base": (day - _SALE_ID_EPOCH).days * _SALE_ID_DAY_STRIDE + profile.sale_id_offset,
        "dup_band": 2 * DUPLICATE_RATE,
        "late_rate": LATE_RATE,
        "updated_rate": UPDATED_RATE,
        "null_discount_rate": NULL_DISCOUNT_RATE,
        "null_tax_rate": NULL_TAX_RATE,
        "discounted_share": DISCOUNTED_SHARE,
        "products": PRODUCTS,
        "price_level_bp": profile.price_level_bp,
        "tax_bp": profile.tax_bp,
        "store_base": profile.store_base,
        "store_count": profile.store_count,
        "customer_base": profile.customer_base,
        "customer_count": profile.customer_count,
    }
    cumulative = 0.0
    for kind, rate in BAND_RATES:
        cumulative += rate
        params[f"t_{kind}"] = cumulative
    cumulative = 0.0
    for status, share in STATUS_SHARES:
        cumulative += share
        params[f"s_{status}"] = cumulative
    return params


# Uniform double in [0, 1) from a row number, a salt (< 64) and a key; an inlinable SQL function,
# created in pg_temp so the source database holds nothing but the data.
_UNIFORM_FUNCTION_DDL = """
CREATE OR REPLACE FUNCTION pg_temp.seed_u(n bigint, salt int, k bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (hashint8extended(n * 64 + salt, k) & 9007199254740991)::float8
          / 9007199254740992.0 $$
"""

# The per-row plan: row kind, status and attribute flags, no values. Shared by the INSERT and
# by the manifest count. Salts used: 0-8 here, 9-16 in _INSERT_SQL. "OFFSET 0" keeps the planner
# from inlining (and so re-evaluating) the hashed CASE expressions in every outer reference.
_PLAN_SQL = """
SELECT i, sidx, kind, status, late,
       is_winner OR (kind <> 'duplicate' AND (
           kind = 'deleted' OR status IN ('cancelled', 'refunded')
           OR pg_temp.seed_u(i, 5, %(key)s) < %(updated_rate)s)) AS updated,
       kind = 'clean' AND pg_temp.seed_u(i, 7, %(key)s) < %(null_discount_rate)s AS null_discount,
       kind = 'clean' AND pg_temp.seed_u(i, 8, %(key)s) < %(null_tax_rate)s AS null_tax
FROM (
    SELECT i, sidx, kind, is_winner,
           CASE WHEN kind <> 'not_completed' THEN 'completed'
                WHEN u_status < %(s_pending)s THEN 'pending'
                WHEN u_status < %(s_cancelled)s THEN 'cancelled'
                ELSE 'refunded' END AS status,
           pg_temp.seed_u(sidx, 3, %(key)s) < %(late_rate)s AS late
    FROM (
        SELECT i, is_winner,
               CASE WHEN is_dup THEN i - 1 ELSE i END AS sidx,
               CASE WHEN is_dup THEN 'duplicate'
                    WHEN is_winner THEN 'clean'
                    WHEN u0 < %(t_not_completed)s THEN 'not_completed'
                    WHEN u0 < %(t_deleted)s THEN 'deleted'
                    WHEN u0 < %(t_null_customer_id)s THEN 'null_customer_id'
                    WHEN u0 < %(t_null_store_id)s THEN 'null_store_id'
                    WHEN u0 < %(t_null_product_id)s THEN 'null_product_id'
                    WHEN u0 < %(t_null_quantity)s THEN 'null_quantity'
                    WHEN u0 < %(t_null_unit_price)s THEN 'null_unit_price'
                    WHEN u0 < %(t_null_total_amount)s THEN 'null_total_amount'
                    WHEN u0 < %(t_quantity_not_positive)s THEN 'quantity_not_positive'
                    WHEN u0 < %(t_unit_price_not_positive)s THEN 'unit_price_not_positive'
                    WHEN u0 < %(t_total_amount_out_of_range)s THEN 'total_amount_out_of_range'
                    ELSE 'clean' END AS kind,
               pg_temp.seed_u(i, 2, %(key)s) AS u_status
        FROM (
            -- A duplicate is an even row that repeats the sale of the (odd) row before it;
            -- that row, the winner, is forced clean and updated.
            SELECT i,
                   i %% 2 = 0 AND pg_temp.seed_u(i, 1, %(key)s) < %(dup_band)s AS is_dup,
                   i %% 2 = 1 AND i < %(n)s
                       AND pg_temp.seed_u(i + 1, 1, %(key)s) < %(dup_band)s AS is_winner,
                   pg_temp.seed_u(i, 0, %(key)s) AS u0
            FROM generate_series(1::bigint, %(n)s::bigint) AS g(i)
        ) AS l0
        OFFSET 0
    ) AS l1
    OFFSET 0
) AS l2
"""

# Values. Money is computed in integer cents (x basis points, rounded half up), then scaled.
# Sale-level attributes (customer, store, product, created_at) come from sidx, so a
# duplicate shares them with the sale it repeats; line-level ones (quantity, discount) from i.
_INSERT_SQL = """
INSERT INTO {table} (sale_id, customer_id, store_id, product_id, quantity, unit_price, discount,
                     tax, total_amount, sale_date, status, is_deleted, created_at, updated_at)
SELECT %(sale_id_base)s + sidx,
       CASE WHEN kind = 'null_customer_id' THEN NULL ELSE customer_id END,
       CASE WHEN kind = 'null_store_id' THEN NULL ELSE store_id END,
       CASE WHEN kind = 'null_product_id' THEN NULL ELSE product_id END,
       CASE kind WHEN 'null_quantity' THEN NULL WHEN 'quantity_not_positive' THEN 0
                 ELSE quantity END,
       CASE kind WHEN 'null_unit_price' THEN NULL WHEN 'unit_price_not_positive' THEN 0
                 ELSE unit_cents END * 0.01,
       CASE WHEN null_discount THEN NULL ELSE discount END * 0.01,
       CASE WHEN null_tax THEN NULL ELSE tax END * 0.01,
       CASE kind WHEN 'null_total_amount' THEN NULL
                 WHEN 'total_amount_out_of_range' THEN (gross * oor_pct + 50) / 100
                 ELSE gross - discount + tax END * 0.01,
       %(sale_date)s::date, status, kind = 'deleted', created_at,
       CASE WHEN updated THEN created_at + interval '1 microsecond' * update_delay_us
            ELSE created_at END
FROM (
    SELECT t.*, CASE WHEN null_tax OR zeroed THEN 0
                     ELSE ((gross - discount) * %(tax_bp)s + 5000) / 10000 END AS tax
    FROM (
        SELECT d.*, CASE WHEN null_discount OR zeroed OR NOT discounted THEN 0
                         ELSE (gross * discount_bp + 5000) / 10000 END AS discount
        FROM (
            SELECT c.*,
                   kind IN ('quantity_not_positive', 'unit_price_not_positive') AS zeroed,
                   CASE WHEN kind IN ('quantity_not_positive', 'unit_price_not_positive')
                        THEN 0 ELSE quantity * unit_cents END AS gross
            FROM (
                SELECT b.*,
                       least(99999, greatest(89, (base_cents * %(price_level_bp)s + 5000) / 10000))
                           AS unit_cents
                FROM (
                    SELECT v.*,
                           CASE WHEN u_tier < 0.35 THEN 99 + floor(u_cents * 901)::bigint
                                WHEN u_tier < 0.70 THEN 1000 + floor(u_cents * 4000)::bigint
                                WHEN u_tier < 0.90 THEN 5000 + floor(u_cents * 15000)::bigint
                                ELSE 20000 + floor(u_cents * 80000)::bigint END AS base_cents
                    FROM (
                        SELECT q.*,
                               pg_temp.seed_u(product_id, 0, %(catalog_key)s) AS u_tier,
                               pg_temp.seed_u(product_id, 1, %(catalog_key)s) AS u_cents
                        FROM (
                            SELECT p.*,
                                   %(customer_base)s + 1
                                       + floor(%(customer_count)s * u_cust * u_cust)::bigint
                                       AS customer_id,
                                   %(store_base)s + 1
                                       + floor(%(store_count)s * u_store * u_store)::int
                                       AS store_id,
                                   1 + floor(%(products)s * u_prod * u_prod)::int AS product_id,
                                   1 + floor(10 * u_qty * u_qty * u_qty)::int AS quantity,
                                   u_disc < %(discounted_share)s AS discounted,
                                   floor(u_rate * 2001)::bigint AS discount_bp,
                                   CASE WHEN u_oor < 0.5
                                        THEN 10 + floor(u_oor * 62)::bigint
                                        ELSE 250 + floor((u_oor - 0.5) * 1502)::bigint
                                        END AS oor_pct,
                                   %(day_start)s::timestamptz
                                       + interval '1 day'
                                         * CASE WHEN late THEN 1 + floor(u_late_days * 3)
                                                ELSE 0 END
                                       + interval '1 microsecond'
                                         * (28800000000 + floor(u_time * 50400000000))
                                       AS created_at,
                                   60000000 + floor(u_delay * 172800000000) AS update_delay_us
                            FROM (
                                SELECT plan.*,
                                       pg_temp.seed_u(sidx, 4, %(key)s) AS u_late_days,
                                       pg_temp.seed_u(i, 6, %(key)s) AS u_delay,
                                       pg_temp.seed_u(sidx, 9, %(key)s) AS u_cust,
                                       pg_temp.seed_u(sidx, 10, %(key)s) AS u_store,
                                       pg_temp.seed_u(sidx, 11, %(key)s) AS u_prod,
                                       pg_temp.seed_u(sidx, 12, %(key)s) AS u_time,
                                       pg_temp.seed_u(i, 13, %(key)s) AS u_qty,
                                       pg_temp.seed_u(i, 14, %(key)s) AS u_disc,
                                       pg_temp.seed_u(i, 15, %(key)s) AS u_rate,
                                       pg_temp.seed_u(i, 16, %(key)s) AS u_oor
                                FROM ({plan}) AS plan
                                OFFSET 0
                            ) AS p
                            OFFSET 0
                        ) AS q
                        OFFSET 0
                    ) AS v
                ) AS b
                OFFSET 0
            ) AS c
            OFFSET 0
        ) AS d
        OFFSET 0
    ) AS t
    OFFSET 0
) AS f
"""

_PLAN_COUNTS_SQL = """
SELECT kind, late, updated, null_discount, null_tax, count(*)
FROM ({plan}) AS plan
GROUP BY kind, late, updated, null_discount, null_tax
"""


def _insert_statement() -> sql.Composed:
    return sql.SQL(_INSERT_SQL).format(
        table=sql.Identifier(contract.SOURCE_TABLE), plan=sql.SQL(_PLAN_SQL)
    )


def _plan_counts_statement() -> sql.Composed:
    return sql.SQL(_PLAN_COUNTS_SQL).format(plan=sql.SQL(_PLAN_SQL))


def _manifest_counts(groups: list[tuple[str, bool, bool, bool, bool, int]]) -> dict[str, int]:
    counts = dict.fromkeys(MANIFEST_KINDS, 0)
    for kind, late, updated, null_discount, null_tax, rows in groups:
        counts[kind] += rows
        counts["late_inserted"] += rows if late else 0
        counts["updated_after_creation"] += rows if updated else 0
        counts["null_discount"] += rows if null_discount else 0
        counts["null_tax"] += rows if null_tax else 0
    return counts


def _check_sizes(days: int, rows_per_region: int) -> None:
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not 1 <= rows_per_region <= MAX_ROWS_PER_REGION:
        raise ValueError(
            f"rows_per_region must be between 1 and {MAX_ROWS_PER_REGION:,}, got {rows_per_region}"
        )


def _pg_message(error: psycopg2.Error) -> str:
    return (error.pgerror or str(error) or type(error).__name__).strip()


def seed_region(
    server_url: str,
    database: str,
    region: str,
    start_date: date,
    days: int,
    rows_per_region: int,
    *,
    seed: int = 42,
    replace: bool = True,
    progress: Callable[[str], None] | None = None,
) -> SeedSummary:
    """Create ``database`` on the server of ``server_url`` and fill it for one region.

    Writes ``rows_per_region`` rows per day for ``days`` days from ``start_date`` into ``sales``
    (one transaction per day, with that day's ``seed_manifest`` rows), then indexes
    ``sales(sale_date)``. ``replace`` drops an existing database of that name first; without it
    an existing database is an error. ``progress`` receives one line per seeded day.
    """
    validate_identifier(region, "region")
    validate_identifier(database, "database")
    _check_sizes(days, rows_per_region)
    started = time.perf_counter()
    if not replace and pg.database_exists(server_url, database):
        raise SeedError(
            f"database {database!r} for region {region!r} already exists; "
            "seed with replace=True to recreate it"
        )
    try:
        pg.create_database(server_url, database, replace=replace)
    except psycopg2.Error as e:
        raise SeedError(
            f"could not create database {database!r} for region {region!r}: {_pg_message(e)}"
        ) from e

    profile = _region_profile(seed, region, rows_per_region)
    insert, plan_counts = _insert_statement(), _plan_counts_statement()
    manifest_insert = sql.SQL("INSERT INTO {} (sale_date, kind, rows) VALUES %s").format(
        sql.Identifier(MANIFEST_TABLE)
    )
    rows_done = 0
    with pg.connect(database_url(server_url, database)) as conn:
        step = "create tables"
        day = start_date
        try:
            with conn.cursor() as cur:
                # Losing the last commits on a server crash is fine for a generator.
                cur.execute("SET synchronous_commit = off")
                cur.execute(contract.create_table_ddl())
                cur.execute(
                    sql.SQL(
                        "CREATE TABLE {} (sale_date date NOT NULL, kind text NOT NULL,"
                        " rows bigint NOT NULL, PRIMARY KEY (sale_date, kind))"
                    ).format(sql.Identifier(MANIFEST_TABLE))
                )
                cur.execute(_UNIFORM_FUNCTION_DDL)
            conn.commit()
            for number in range(1, days + 1):
                day = start_date + timedelta(days=number - 1)
                step = "insert rows"
                params = _day_params(seed, region, day, rows_per_region, profile)
                with conn.cursor() as cur:
                    cur.execute(insert, params)
                    inserted = cur.rowcount
                    step = "write manifest"
                    cur.execute(plan_counts, params)
                    counts = _manifest_counts(cur.fetchall())
                    execute_values(
                        cur, manifest_insert, [(day, kind, n) for kind, n in counts.items()]
                    )
                conn.commit()
                if inserted != rows_per_region:
                    raise SeedError(
                        f"region {region!r} date {day}: inserted {inserted} rows, "
                        f"expected {rows_per_region}"
                    )
                rows_done += inserted
                if progress is not None:
                    progress(
                        f"{region}: day {number}/{days} ({day}), {rows_done:,} rows, "
                        f"{time.perf_counter() - started:.1f} s"
                    )
            step = "index sale_date"
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE INDEX {} ON {} (sale_date)").format(
                        sql.Identifier(SALE_DATE_INDEX), sql.Identifier(contract.SOURCE_TABLE)
                    )
                )
            conn.commit()
            with conn.cursor() as cur:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(contract.SOURCE_TABLE)))
            conn.commit()
        except psycopg2.Error as e:
            conn.rollback()
            raise SeedError(
                f"seeding region {region!r} into database {database!r} failed at "
                f"'{step}' (date {day}): {_pg_message(e)}"
            ) from e
    return SeedSummary(
        region=region, database=database, rows=rows_done, seconds=time.perf_counter() - started
    )


def seed_regions(
    server_url: str,
    regions: Sequence[str],
    start_date: date,
    days: int,
    rows_per_region: int,
    *,
    database_for_region: Callable[[str], str],
    seed: int = 42,
    progress: Callable[[str], None] | None = None,
    max_workers: int = 4,
) -> list[SeedSummary]:
    """Seed every region concurrently (one database each, replaced if it exists).

    Returns the summaries in the order of ``regions``. ``progress`` is called (serialised) with
    one line per region and day, e.g. ``"us_east: day 3/7 (2024-01-17), 1,500,000 rows, 4.2 s"``.
    If any region fails, the others still finish and a :class:`SeedError` naming the failed
    regions is raised.
    """
    names = [validate_identifier(region, "region") for region in regions]
    if not names:
        raise ValueError("no regions to seed")
    if len(set(names)) != len(names):
        raise ValueError(f"regions listed more than once: {names}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")
    _check_sizes(days, rows_per_region)
    databases = {
        region: validate_identifier(database_for_region(region), "database") for region in names
    }
    if len(set(databases.values())) != len(names):
        raise ValueError(f"regions share a database name: {databases}")

    lock = threading.Lock()

    def report(line: str) -> None:
        if progress is not None:
            with lock:
                progress(line)

    with ThreadPoolExecutor(max_workers=min(max_workers, len(names))) as pool:
        futures: dict[str, Future[SeedSummary]] = {
            region: pool.submit(
                seed_region,
                server_url,
                databases[region],
                region,
                start_date,
                days,
                rows_per_region,
                seed=seed,
                replace=True,
                progress=report,
            )
            for region in names
        }
    summaries: list[SeedSummary] = []
    failures: list[tuple[str, BaseException]] = []
    for region, future in futures.items():
        error = future.exception()
        if error is None:
            summaries.append(future.result())
        else:
            failures.append((region, error))
    if failures:
        failed = ", ".join(region for region, _ in failures)
        raise SeedError(f"seeding failed for region(s) {failed}: {failures[0][1]}") from (
            failures[0][1]
        )
    return summaries


def is_seeded(source_url: str, start_date: date, days: int) -> bool:
    """Whether the source database exists and ``sales`` has rows for every date of the range."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    database = make_url(source_url).database or ""
    if not pg.database_exists(database_url(source_url, "postgres"), database):
        return False
    table = contract.SOURCE_TABLE
    with pg.connect(source_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        row = cur.fetchone()
        if row is None or not row[0]:
            return False
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM generate_series(%s::date, %s::date, interval '1 day') AS d"
                " WHERE NOT EXISTS (SELECT 1 FROM {} AS s WHERE s.sale_date = d::date)"
            ).format(sql.Identifier(table)),
            (start_date, start_date + timedelta(days=days - 1)),
        )
        missing = cur.fetchone()
    return missing is not None and missing[0] == 0


def planted_dirt(source_url: str, business_date: date) -> dict[str, int]:
    """The seed manifest of one date: rows per kind (every kind of ``MANIFEST_KINDS``).

    Reject kinds count extractable rows only; ``duplicate`` counts the losing rows.
    Raises :class:`SeedError` if the database has no manifest for that date.
    """
    database = make_url(source_url).database
    with pg.connect(source_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (MANIFEST_TABLE,))
        row = cur.fetchone()
        if row is None or not row[0]:
            raise SeedError(f"database {database!r} has no {MANIFEST_TABLE} table (not seeded)")
        cur.execute(
            sql.SQL("SELECT kind, rows FROM {} WHERE sale_date = %s").format(
                sql.Identifier(MANIFEST_TABLE)
            ),
            (business_date,),
        )
        rows = cur.fetchall()
    if not rows:
        raise SeedError(f"database {database!r} has no seed manifest for date {business_date}")
    counts = dict.fromkeys(MANIFEST_KINDS, 0)
    counts.update({kind: int(n) for kind, n in rows})
    return counts
