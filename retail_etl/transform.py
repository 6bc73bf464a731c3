"""Transform regions' extracts into accepted rows and rejects, with DuckDB.

Plain functions, no Prefect. A *pass* is one set of DuckDB statements on an in-memory
connection (``memory_limit``, ``threads``, a spill ``temp_directory`` under the run dir) over
one region (:func:`transform_region`) or over several small regions with the same extract
schema (:func:`transform_regions`, up to ``pass_rows`` rows: each row tagged with its region,
deduplication, statistics and reconciliation per region, one partitioned COPY per output).
A region's output and counts are the same either way; a shared pass that fails runs its
regions again alone. Regions may run concurrently from threads on connections of their own,
or in turn on one :func:`transform_connection` (one connection's start-up for many regions).

What happens to a region's extract (``{run_dir}/extract/region=R/part-*.parquet``):

1. **Typing.** Every contract column is converted to its contract type. A column that arrives
   in its contract type is used as is; any other input type (schema drift: usually ``string``)
   goes through an *exact* conversion: the text is parsed as a wide decimal first and converted
   only if nothing is lost. ``'12.345'`` into ``DECIMAL(10,2)`` or ``'12.5'`` into ``INTEGER``
   is **rejected** as ``invalid_<column>``, never silently rounded (plain ``CAST`` would round).
   Strings are trimmed before parsing; an empty string is not NULL, it is invalid.
   Timestamps become UTC: strings with an offset are converted, naive values and strings without
   an offset are taken as UTC. ``status`` is trimmed and lower-cased; ``region`` (the parameter)
   is lower-cased. A value that is present but cannot be converted rejects the row as
   ``invalid_<column>`` (any contract column, critical or not). Limit: the wide decimal keeps
   ``38 - (precision - scale)`` fractional digits (30 for ``DECIMAL(10,2)``); digits beyond
   that are rounded before the exactness test.
2. **NULLs.** A NULL in a critical column rejects the row as ``null_<column>``; NULL ``discount``
   and ``tax`` become ``0.00`` on accepted rows.
3. **Deduplication** on ``(region, sale_id)`` over the whole region: an aggregate over the key
   finds the repeated ``sale_id``s, and only their rows are windowed (``row_number() OVER
   (PARTITION BY sale_id ORDER BY updated_at DESC NULLS LAST, created_at DESC NULLS LAST,
   md5(<the row's extracted values>) DESC)``): the latest ``updated_at`` wins, and the winner never
   depends on COPY row order or file order. Every other version is rejected as ``duplicate``.
   This runs on all rows with a non-NULL typed ``sale_id``, valid or not, whatever their status:
   if the latest version is bad it is rejected for its own reasons and the older versions stay
   rejected as duplicates (loading a stale version would be wrong). Rows with a NULL
   ``sale_id`` are not deduplicated.
   **Retractions**: a winner that is deleted (``is_deleted``) or whose status is not
   ``completed`` (trimmed, any case: :func:`normalized_status`, the one place) is a retraction
   (``deleted``, ``status_<status>``), not a reject: it goes to ``retractions/`` with its raw
   values, and the warehouse removes the key from ``sales_fact``.
4. **Business rules** (:data:`REJECT_RULES`), each a SQL predicate over the typed columns:
   ``quantity_not_positive``, ``unit_price_not_positive``, ``total_amount_out_of_range``
   (outside ``[0.5, 2] x gross``, bounds accepted), ``sale_date_mismatch`` and
   ``effective_discount_rate_out_of_range`` (``|discount| / gross`` would not fit
   ``DECIMAL(9,6)``; added so one absurd discount cannot abort a region with an overflow).
5. **Derived metrics** (accepted rows): ``gross_amount = quantity * unit_price``
   (``DECIMAL(18,2)``), ``net_amount = gross_amount - discount`` (``DECIMAL(18,2)``),
   ``effective_discount_rate = round(discount / gross_amount, 6)`` (``DECIMAL(9,6)``, rounded
   half away from zero in exact integer arithmetic, never through a float).
6. **Lineage**: accepted and rejected rows carry ``batch_id`` and ``flow_run_id``.

A row collects *every* reason that applies (sorted, joined by ``;``), so a duplicate loser with a
NULL customer reads ``duplicate;null_customer_id``.

Memory: DuckDB's streaming parquet reader reads the region in passes. The dedup reads the key
column for the aggregate and whole rows only of the repeated keys, and keeps the losers'
(file, row) in a small temporary table; the classification (typing, reasons, retractions, the
losers looked up by a hash join) runs once, into the temporary table ``classified``; the accepted
parquet is written from it, and the rows not accepted (rejected or retracted) are a view over
it; one scan of the accepted parquet as written serves the reconciliation and measures the
quality gate's invariants (:mod:`retail_etl.rules`). The one structure that holds whole rows of
the region, ``classified``, spills past ``memory_limit`` to ``temp_directory``, so a 10x day
costs time, not memory. Because the window sees the whole
region, duplicates split across extract files (chunks) are found by construction.

Output (always, also for zero rows): ``out_dir/accepted/region=R/part-<i>.parquet``,
``out_dir/rejects/region=R/part-<i>.parquet`` and ``out_dir/retractions/region=R/part-<i>.parquet``
(``contract.retraction_arrow_schema()``), at least one file each, possibly empty but with the
full schema (every column nullable, decimals as decimal128, timestamps ``timestamp[us, UTC]``),
so loaders never special-case a missing file. The files carry ``region`` as a column too: read
them with hive partitioning off (or as a plain string), not as a dictionary partition. Output
is written to hidden ``.region=R.*.tmp`` folders and replaces the region's folders only after it
reconciled, so a re-run replaces them and a failed run leaves no half-written region.

Reconciliation (:class:`ReconciliationError`), each side counted on its own: rows in the
extract files' footers == rows read == accepted rows in the written files + rejected rows +
retracted rows, and the rows each COPY reported agree; ``total_amount`` read == accepted files +
rejected rows + retracted rows, to the cent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from retail_etl import contract
from retail_etl.rules import (
    REJECT_RULES,
    AcceptedMeasures,
    invalid_reason,
    measure_accepted,
    null_reason,
)
from retail_etl.settings import validate_identifier
from retail_etl.warehouse.dialects.duckdb import duckdb_type

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE_REASON",
    "FrameOutput",
    "ReconciliationError",
    "RegionTransformResult",
    "TransformConnection",
    "TransformError",
    "TransformInputError",
    "all_reasons",
    "classify_frame",
    "transform_connection",
    "transform_frame",
    "transform_region",
    "transform_regions",
]


class TransformError(RuntimeError):
    """Base class of transform errors."""


class TransformInputError(TransformError):
    """The extract of a region cannot be read or does not have the contract's columns."""


class ReconciliationError(TransformError):
    """Rows or money do not add up: extracted != accepted + rejected, or the files disagree."""


DUPLICATE_REASON = "duplicate"
#: Retraction reasons: the latest version of a sale is deleted, or its status is not completed
#: (``status_<status>``: status_refunded, status_cancelled, status_pending, ...; a status that
#: is not a plain word is ``status_other``, a NULL one ``status_null``). The warehouse adds
#: ``missing_from_source`` for stored keys the source no longer has.
DELETED_REASON = "deleted"
MISSING_FROM_SOURCE_REASON = "missing_from_source"


def all_reasons() -> tuple[str, ...]:
    """Every reason the transform can give, sorted (the order reasons are joined in)."""
    names = {DUPLICATE_REASON, *REJECT_RULES}
    names.update(null_reason(c) for c in contract.CRITICAL_COLUMNS)
    names.update(invalid_reason(c) for c in contract.COLUMN_NAMES)
    return tuple(sorted(names))


@dataclass
class RegionTransformResult:
    """Counts and files of one region's transform.

    ``reasons`` counts rows per reason (a row with two reasons counts in both); ``null_counts``
    is the number of NULLs per critical column in the raw extract (every row, before dedup).
    The ``total_amount_*`` sums are over the castable ``total_amount`` values (NULL and invalid
    count as nothing), so ``extracted == accepted + rejected + retracted`` to the cent.
    """

    region: str
    rows_extracted: int
    rows_accepted: int
    rows_rejected: int
    reasons: dict[str, int]
    null_counts: dict[str, int]
    total_amount_extracted: Decimal
    total_amount_accepted: Decimal
    total_amount_rejected: Decimal
    accepted_files: list[Path] = field(default_factory=list)
    reject_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    rows_retracted: int = 0
    total_amount_retracted: Decimal = Decimal(0)
    #: retracted rows per reason (``deleted``, ``status_refunded``, ...)
    retraction_reasons: dict[str, int] = field(default_factory=dict)
    retraction_files: list[Path] = field(default_factory=list)
    #: distinct non-NULL sale_ids of the extract: what the source holds for the day
    source_keys: int = 0
    #: the quality gate's invariants, measured in the read-back of the accepted files
    #: the gate's invariants measured on the accepted files as written (None: not measured,
    #: and the gate fails the region)
    accepted_measures: AcceptedMeasures | None = None

    @property
    def reject_rate(self) -> float:
        return self.rows_rejected / self.rows_extracted if self.rows_extracted else 0.0


# ---------------------------------------------------------------------------------------------
# SQL building. Identifiers in the SQL are contract column names (constants of this package);
# every value (region, dates, ids, paths) is a bound parameter.

_SRC_FILE = "__src_file"
_SRC_ROW = "__src_row"
#: The region a source row belongs to (a pass may read several regions' extracts at once).
_REGION = "__region"
_DUPLICATE = "__duplicate"
_INTEGER_TYPES = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
}
_INT_DIGITS = {"BIGINT": 19, "INTEGER": 10}
_DECIMAL_RE = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _raw(column: str) -> str:
    return _q(f"__raw_{column}")


@dataclass(frozen=True)
class _ColumnSql:
    name: str
    typed: str  # expression over the source column giving the contract-typed value
    keep_raw: bool  # the raw value differs from the typed one: carry it for raw_values / checks
    can_be_invalid: bool  # a present raw value may fail the conversion
    nan: bool = False  # typed money column: NaN arrives as NULL, named in the NaN column


_NAN = _q(contract.NAN_COLUMN)


def _nan_predicate(column: str) -> str:
    """TRUE when the source value of money column ``column`` was ``NaN`` (see the extract)."""
    return f"coalesce(contains({_NAN}, ',{column},'), false)"


def normalized_status(expr: str) -> str:
    """The one place a status is normalized (trimmed, lower-cased): the transform compares it
    with :data:`~retail_etl.contract.COMPLETED_STATUS` and stores it in this form."""
    return f"lower(trim(CAST({expr} AS VARCHAR)))"


def _exact_numeric(text: str, target: str, wide_scale: int, exact: str) -> str:
    # Parse into the widest decimal that still holds every valid integer part and convert only
    # when ``exact`` holds, i.e. nothing is lost (plain CAST would round '12.345' or '12.5').
    wide = f"TRY_CAST({text} AS DECIMAL(38,{wide_scale}))"
    return f"CASE WHEN {exact.format(w=wide)} THEN TRY_CAST({wide} AS {target}) END"


def _column_sql(column: contract.ContractColumn, input_type: str, nan: bool) -> _ColumnSql:
    name, src, target = column.name, _q(column.name), duckdb_type(column.arrow_type)
    text = f"trim(CAST({src} AS VARCHAR))"
    if name == "status":
        return _ColumnSql(name, normalized_status(src), True, False)
    if input_type == target:
        return _ColumnSql(name, src, False, False, nan=nan and name in contract.MONEY_COLUMNS)
    dm_in = _DECIMAL_RE.match(input_type)
    if target in _INT_DIGITS:
        if input_type in _INTEGER_TYPES or (dm_in is not None and dm_in.group(2) == "0"):
            typed = f"TRY_CAST({src} AS {target})"  # integer to integer: exact or NULL
        else:
            typed = _exact_numeric(text, target, 38 - _INT_DIGITS[target], "{w} = trunc({w})")
        return _ColumnSql(name, typed, True, True)
    if (dm := _DECIMAL_RE.match(target)) is not None:
        precision, scale = int(dm.group(1)), int(dm.group(2))
        if input_type in _INTEGER_TYPES or (dm_in is not None and int(dm_in.group(2)) <= scale):
            typed = f"TRY_CAST({src} AS {target})"  # no fractional digits lost
        else:
            typed = _exact_numeric(
                text, target, 38 - (precision - scale), f"{{w}} = round({{w}}, {scale})"
            )
        return _ColumnSql(name, typed, True, True)
    if input_type == "VARCHAR":
        return _ColumnSql(name, f"TRY_CAST(trim({src}) AS {target})", True, True)
    return _ColumnSql(name, f"TRY_CAST({src} AS {target})", True, True)


def _column_plan(input_types: Mapping[str, str], where: str) -> list[_ColumnSql]:
    missing = [c for c in contract.COLUMN_NAMES if c not in input_types]
    allowed = {
        *contract.COLUMN_NAMES,
        contract.EXTRAS_COLUMN,
        contract.NAN_COLUMN,
        _SRC_FILE,
        _SRC_ROW,
        _REGION,
    }
    unknown = [c for c in input_types if c not in allowed]
    if missing or unknown:
        raise TransformInputError(
            f"{where}: extract does not match the contract: missing columns {missing}, "
            f"unexpected columns {unknown} (non-contract source columns belong in "
            f"{contract.EXTRAS_COLUMN!r})"
        )
    nan = contract.NAN_COLUMN in input_types
    return [_column_sql(c, input_types[c.name], nan) for c in contract.SALES_COLUMNS]


def _raw_ref(col: _ColumnSql) -> str:
    return _raw(col.name) if col.keep_raw else _q(col.name)


def _raw_text(col: _ColumnSql) -> str:
    """The value as extracted, as text (``'NaN'`` for a NaN money value)."""
    text = f"CAST({_raw_ref(col)} AS VARCHAR)"
    return f"CASE WHEN {_nan_predicate(col.name)} THEN 'NaN' ELSE {text} END" if col.nan else text


def _reason_cases(plan: Sequence[_ColumnSql]) -> list[tuple[str, str]]:
    cases: dict[str, str] = {DUPLICATE_REASON: _DUPLICATE}
    for col in plan:
        if col.nan:
            cases[invalid_reason(col.name)] = _nan_predicate(col.name)
        if col.name in contract.CRITICAL_COLUMNS:
            cases[null_reason(col.name)] = f"{_raw_ref(col)} IS NULL" + (
                f" AND NOT {_nan_predicate(col.name)}" if col.nan else ""
            )
        if col.can_be_invalid:
            cases[invalid_reason(col.name)] = (
                f"{_raw(col.name)} IS NOT NULL AND {_q(col.name)} IS NULL"
            )
    for name, predicate in REJECT_RULES.items():
        cases[name] = f"coalesce(({predicate}), false)"
    return sorted(cases.items())  # sorted, so concat_ws yields the reasons sorted


_LOSERS = "losers"
_CLASSIFIED = "classified"
_DUP_KEYS = "dup_keys"


def _dup_keys_sql(source_sql: str, plan: Sequence[_ColumnSql]) -> str:
    """The (region, typed ``sale_id``) that occur more than once (an aggregate over the key
    columns only)."""
    typed = {c.name: c.typed for c in plan}
    return f"""
SELECT {_REGION}, {typed["sale_id"]} AS sale_id, count(*) AS n FROM ({source_sql})
WHERE {typed["sale_id"]} IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1
"""  # noqa: S608 - identifiers are contract constants


def _losers_sql(source_sql: str, plan: Sequence[_ColumnSql]) -> str:
    """(file, row) of every row that loses the dedup: a version of its ``sale_id`` other than
    the latest ``updated_at``; ties go to the latest ``created_at``, then to the larger MD5 of
    the row's extracted values, so the winner never depends on COPY row order or file order
    (identical rows are interchangeable). Only the keys in ``dup_keys`` (:func:`_dup_keys_sql`)
    are windowed, so the window sees a few rows where it used to sort the whole region.
    Rows with a NULL typed ``sale_id`` are never losers."""
    typed = {c.name: c.typed for c in plan}
    raw = (
        ", ".join(f"{_q(c.name)} := CAST({_q(c.name)} AS VARCHAR)" for c in plan)
        + f", {_q(contract.EXTRAS_COLUMN)} := CAST({_q(contract.EXTRAS_COLUMN)} AS VARCHAR)"
    )
    return f"""
SELECT {_SRC_FILE}, {_SRC_ROW} FROM (
    SELECT {_SRC_FILE}, {_SRC_ROW},
           row_number() OVER (PARTITION BY {_REGION}, sale_id
               ORDER BY {typed["updated_at"]} DESC NULLS LAST, {typed["created_at"]} DESC NULLS LAST,
                        md5(CAST(to_json(struct_pack({raw})) AS VARCHAR)) DESC) AS rn
    FROM (SELECT *, {typed["sale_id"]} AS sale_id FROM ({source_sql}))
    SEMI JOIN {_DUP_KEYS} USING ({_REGION}, sale_id)
) WHERE rn > 1
"""  # noqa: S608 - identifiers are contract constants


def _retraction_sql() -> str:
    """The retraction reason of a classified row (NULL: not retracted). Only the latest version
    of a key (not a ``duplicate`` loser, ``sale_id`` present) can retract it."""
    completed = contract.COMPLETED_STATUS
    return (
        f"CASE WHEN NOT {_DUPLICATE} AND sale_id IS NOT NULL THEN CASE "
        f"WHEN is_deleted IS TRUE THEN '{DELETED_REASON}' "
        f"WHEN status = '{completed}' THEN NULL "
        "WHEN status IS NULL THEN 'status_null' "
        "WHEN regexp_full_match(status, '[a-z][a-z0-9_]{0,39}') THEN 'status_' || status "
        "ELSE 'status_other' END END"
    )


def _classify_sql(source_sql: str, plan: Sequence[_ColumnSql], has_extras: bool) -> str:
    """SELECT every row: typed columns, ``gross_amount``, ``reasons`` ('' = accepted), raw JSON.
    Reads the ``losers`` table (:func:`_losers_sql`) for the duplicate reason. No operator
    holds the region's rows; the result is materialized once (``classified``)."""
    extras = _q(contract.EXTRAS_COLUMN)
    selected = [f"{c.typed} AS {_q(c.name)}" for c in plan]
    selected += [f"{_q(c.name)} AS {_raw(c.name)}" for c in plan if c.keep_raw]
    selected.append(f"CAST({extras} AS VARCHAR)" if has_extras else "CAST(NULL AS VARCHAR)")
    selected[-1] += f" AS {extras}"
    if any(c.nan for c in plan):
        selected.append(_NAN)
    reasons = ", ".join(f"CASE WHEN {pred} THEN '{name}' END" for name, pred in _reason_cases(plan))
    raw_json = ", ".join(f"{_q(c.name)} := {_raw_text(c)}" for c in plan)
    raw_json += f", {extras} := {extras}"
    typed_names = ", ".join(_q(c.name) for c in plan)
    return f"""
WITH typed AS (
    SELECT {", ".join(selected)}, {_SRC_FILE}, {_SRC_ROW}, {_REGION} FROM ({source_sql})
),
joined AS (
    SELECT typed.*, CAST(quantity AS DECIMAL(38,0)) * unit_price AS gross_amount,
           l.{_SRC_ROW} IS NOT NULL AS {_DUPLICATE}
    FROM typed LEFT JOIN {_LOSERS} l USING ({_SRC_FILE}, {_SRC_ROW})
),
reasoned AS (
    SELECT *, concat_ws(';', {reasons}) AS reasons, {_retraction_sql()} AS retraction
    FROM joined
)
SELECT {_REGION}, {typed_names}, gross_amount, {extras}, reasons, retraction,
       CASE WHEN reasons <> '' OR retraction IS NOT NULL
            THEN CAST(to_json(struct_pack({raw_json})) AS VARCHAR) END AS raw_values
FROM reasoned
"""  # noqa: S608 - identifiers are contract constants; values are bound parameters


def _accepted_select() -> str:
    # Exact integer arithmetic in cents, rounded half away from zero (like Postgres/Snowflake
    # ROUND). BIGINT suffices on accepted rows: |discount| < 1e10 cents, gross <= 2e12 cents
    # (total_amount <= 1e10 and gross <= 2 x total), so 2 * |discount| * 1e6 + gross < 9.2e18.
    cents_discount = "CAST(coalesce(discount, 0) * 100 AS BIGINT)"
    cents_gross = "CAST(gross_amount * 100 AS BIGINT)"
    rate_micro = (
        f"sign({cents_discount}) * ((2 * abs({cents_discount}) * 1000000 + {cents_gross}) "
        f"// (2 * {cents_gross}))"
    )
    exprs: dict[str, str] = {"region": _REGION}
    for name in contract.ACCEPTED_COLUMNS:
        if name in ("discount", "tax"):
            exprs[name] = f"CAST(coalesce({name}, 0) AS DECIMAL(10,2))"
        elif name in contract.COLUMNS_BY_NAME:
            exprs[name] = _q(name)
    exprs["gross_amount"] = "CAST(gross_amount AS DECIMAL(18,2))"
    exprs["net_amount"] = "CAST(gross_amount - coalesce(discount, 0) AS DECIMAL(18,2))"
    exprs["effective_discount_rate"] = (
        f"CAST(CAST({rate_micro} AS DECIMAL(18,0)) * CAST(0.000001 AS DECIMAL(7,6)) "
        f"AS DECIMAL(9,6))"
    )
    exprs[contract.EXTRAS_COLUMN] = _q(contract.EXTRAS_COLUMN)
    exprs["batch_id"] = "CAST($batch_id AS VARCHAR)"
    exprs["flow_run_id"] = "CAST($flow_run_id AS VARCHAR)"
    cols = ", ".join(f"{exprs[n]} AS {_q(n)}" for n in contract.ACCEPTED_COLUMNS)
    return (
        f"SELECT {cols} FROM {_CLASSIFIED} "  # noqa: S608 - constant identifiers
        "WHERE reasons = '' AND retraction IS NULL"
    )


#: Temporary view of every row that is not accepted: rejected (``retraction IS NULL``) or
#: retracted; ``rejected`` and ``retracted`` are views over it. A view, not a copy: its three
#: readers filter ``classified`` for a few percent of its rows (500K rows: 0.08 s less).
_NOT_ACCEPTED = "not_accepted"
_REJECTED = "rejected"
_RETRACTED = "retracted"


_REJECTS_SELECT = (
    f"SELECT {_REGION} AS region, sale_id, "  # noqa: S608 - constant identifiers
    "CAST($business_date AS DATE) AS sale_date, reasons, raw_values, "
    "CAST($batch_id AS VARCHAR) AS batch_id, CAST($flow_run_id AS VARCHAR) AS flow_run_id "
    f"FROM {_REJECTED}"
)
_RETRACTIONS_SELECT = (
    f"SELECT {_REGION} AS region, sale_id, "  # noqa: S608 - constant identifiers
    "CAST($business_date AS DATE) AS sale_date, retraction AS reason, raw_values, "
    "CAST($batch_id AS VARCHAR) AS batch_id, CAST($flow_run_id AS VARCHAR) AS flow_run_id "
    f"FROM {_RETRACTED}"
)


#: Output folders of a region's transform, each ``<kind>/region=R/part-<i>.parquet``.
_OUTPUTS = ("accepted", "rejects", "retractions")


def _duckdb_types(schema: pa.Schema) -> list[tuple[str, str]]:
    """(column, DuckDB type) of an output schema."""
    return [(f.name, duckdb_type(f.type)) for f in schema]


def _all_nullable(select_sql: str, schema: pa.Schema) -> str:
    """``select_sql`` plus a NULL row that is never produced.

    DuckDB's parquet writer marks a column REQUIRED (not null) when its statistics show no NULL,
    so the file schema would depend on the data. The union with a NULL row behind a volatile,
    always-false filter makes every column's statistics nullable at no cost, so every file has
    exactly the contract schema (all columns nullable).
    """
    nulls = ", ".join(f"CAST(NULL AS {t}) AS {_q(n)}" for n, t in _duckdb_types(schema))
    return f"{select_sql} UNION ALL SELECT {nulls} WHERE random() < 0"


def _params(sql: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The named parameters ``sql`` uses (DuckDB rejects unused ones)."""
    return {k: v for k, v in values.items() if f"${k}" in sql}


def _connect(memory_limit: str, threads: int, temp_dir: Path | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET memory_limit = $v", {"v": memory_limit})
    con.execute("SET threads = $v", {"v": threads})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")  # lets COPY stream instead of buffering
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = $v", {"v": str(temp_dir)})
    return con


class TransformConnection:
    """One DuckDB connection for several regions transformed in turn (the regions that landed
    together): one connection's start-up instead of one per region. Each region drops its
    temporary tables when it is done; a region that fails discards the connection, so the next
    region starts on a fresh one and a failure stays its region's own. Use it from one thread
    at a time (regions run concurrently need one each). Made by :func:`transform_connection`."""

    def __init__(self, memory_limit: str, threads: int, spill: Path) -> None:
        self._settings = (memory_limit, threads, spill)
        self._con: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        """The open connection (opened on first use and after :meth:`discard`)."""
        if self._con is None:
            self._con = _connect(*self._settings)
        return self._con

    def discard(self) -> None:
        """Close the connection; the next :meth:`get` opens a fresh one."""
        if self._con is not None:
            self._con.close()
            self._con = None


@contextlib.contextmanager
def transform_connection(
    out_dir: Path,
    *,
    memory_limit: str = "1GB",
    threads: int = 2,
    temp_dir: Path | None = None,
) -> Iterator[TransformConnection]:
    """A :class:`TransformConnection` spilling to ``temp_dir`` (default
    ``out_dir/.duckdb-tmp/<random>``, removed on exit)."""
    own_temp = temp_dir is None
    spill = temp_dir or Path(out_dir) / ".duckdb-tmp" / uuid.uuid4().hex[:8]
    connection = TransformConnection(memory_limit, threads, spill)
    try:
        yield connection
    finally:
        connection.discard()
        if own_temp:
            shutil.rmtree(spill, ignore_errors=True)
            with contextlib.suppress(OSError):  # other regions may still be using it
                spill.parent.rmdir()


_TYPE_ALIASES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}


def _input_types(
    con: duckdb.DuckDBPyConnection, source_sql: str, params: Mapping[str, Any]
) -> dict[str, str]:
    """Column -> DuckDB type name of the source (aliases mapped to the contract's spelling)."""
    sql = f"DESCRIBE SELECT * FROM ({source_sql})"  # noqa: S608 - source built from constants
    rows = con.execute(sql, _params(sql, params)).fetchall()
    return {str(r[0]): _TYPE_ALIASES.get(str(r[1]), str(r[1])) for r in rows}


@dataclass(frozen=True)
class _Classified:
    """A pass's regions classified into the temporary table ``classified`` (every row, once:
    the accepted COPY and the not-accepted rows read it instead of classifying again; DuckDB
    spills it past ``memory_limit``); the rejected rows are in the view ``rejected``."""

    total_amount: str  # the typed total_amount over the source (for the extracted sum)
    sale_id: str  # the typed sale_id over the source (for the source's distinct keys)


def _classify(
    con: duckdb.DuckDBPyConnection,
    source_sql: str,
    params: Mapping[str, Any],
    where: str,
) -> _Classified:
    types = _input_types(con, source_sql, params)
    plan = _column_plan(types, where)
    dup_keys = f"CREATE TEMP TABLE {_DUP_KEYS} AS {_dup_keys_sql(source_sql, plan)}"
    con.execute(dup_keys, _params(dup_keys, params))
    losers = f"CREATE TEMP TABLE {_LOSERS} AS {_losers_sql(source_sql, plan)}"
    con.execute(losers, _params(losers, params))
    classify = (
        f"CREATE TEMP TABLE {_CLASSIFIED} AS "
        f"{_classify_sql(source_sql, plan, contract.EXTRAS_COLUMN in types)}"
    )
    con.execute(classify, _params(classify, params))
    con.execute(
        f"CREATE TEMP VIEW {_NOT_ACCEPTED} AS SELECT * FROM {_CLASSIFIED} "  # noqa: S608
        "WHERE reasons <> '' OR retraction IS NOT NULL"
    )
    con.execute(
        f"CREATE TEMP VIEW {_REJECTED} AS SELECT * FROM {_NOT_ACCEPTED} "  # noqa: S608
        "WHERE retraction IS NULL"
    )
    con.execute(
        f"CREATE TEMP VIEW {_RETRACTED} AS SELECT * FROM {_NOT_ACCEPTED} "  # noqa: S608
        "WHERE retraction IS NOT NULL"
    )
    typed = {c.name: c.typed for c in plan}
    return _Classified(typed["total_amount"], typed["sale_id"])


@dataclass(frozen=True)
class _Stats:
    extracted: int
    accepted: int
    rejected: int
    total_extracted: Decimal
    total_accepted: Decimal
    total_rejected: Decimal
    reasons: dict[str, int]
    retracted: int
    total_retracted: Decimal
    retraction_reasons: dict[str, int]
    source_keys: int
    accepted_measures: AcceptedMeasures


def _stats(
    con: duckdb.DuckDBPyConnection,
    source_sql: str,
    classified: _Classified,
    accepted_files: Mapping[str, Sequence[Path]],
    params: Mapping[str, Any],
) -> dict[str, _Stats]:
    """Per region of the pass (the keys of ``accepted_files``): counts and ``total_amount``
    sums, each computed on its own: every extracted row (the source), the accepted files as
    written, and the rejected rows. The read-back of the accepted files also measures the
    quality gate's invariants (:func:`measure_accepted`). A region without rows is all zeros."""
    extracted_sql = (
        f"SELECT {_REGION}, count(*), coalesce(sum({classified.total_amount}), 0), "  # noqa: S608
        f"count({classified.sale_id}) FROM ({source_sql}) GROUP BY 1"
    )
    extracted = {
        str(r): (int(n), Decimal(total), int(keys))
        for r, n, total, keys in con.execute(
            extracted_sql, _params(extracted_sql, params)
        ).fetchall()
    }
    repeats_sql = f"SELECT {_REGION}, sum(n - 1) FROM {_DUP_KEYS} GROUP BY 1"  # noqa: S608
    repeats = {str(r): int(n) for r, n in con.execute(repeats_sql).fetchall()}
    measures = measure_accepted(con, accepted_files, business_date=params["business_date"])
    # The rows not accepted: rejected (retraction IS NULL) and retracted counts and sums, and
    # retracted rows per reason; then rejected rows per reason (one row may have several).
    not_accepted_sql = (
        f"SELECT {_REGION}, count(*) FILTER (WHERE retraction IS NULL), "  # noqa: S608
        "coalesce(sum(total_amount) FILTER (WHERE retraction IS NULL), 0), "
        "count(*) FILTER (WHERE retraction IS NOT NULL), "
        "coalesce(sum(total_amount) FILTER (WHERE retraction IS NOT NULL), 0), "
        f"histogram(retraction) FILTER (WHERE retraction IS NOT NULL) FROM {_NOT_ACCEPTED} "
        "GROUP BY 1"
    )
    not_accepted = {str(row[0]): row[1:] for row in con.execute(not_accepted_sql).fetchall()}
    reasons_sql = (
        f"SELECT {_REGION}, histogram(r) FROM (SELECT {_REGION}, "  # noqa: S608
        f"unnest(string_split(reasons, ';')) AS r FROM {_REJECTED}) GROUP BY 1"
    )
    reasons = {str(r): h for r, h in con.execute(reasons_sql).fetchall()}
    stats = {}
    for region in accepted_files:
        n, total, keys = extracted.get(region, (0, Decimal(0), 0))
        rejected, rejected_total, retracted, retracted_total, retraction_map = not_accepted.get(
            region, (0, 0, 0, 0, None)
        )
        stats[region] = _Stats(
            n,
            measures[region].rows,
            int(rejected),
            total,
            measures[region].total_amount,
            Decimal(rejected_total),
            _counts(reasons.get(region)),
            int(retracted),
            Decimal(retracted_total),
            _counts(retraction_map),
            keys - repeats.get(region, 0),
            measures[region],
        )
    return stats


def _counts(histogram: Mapping[Any, Any] | None) -> dict[str, int]:
    """A DuckDB ``histogram`` (NULL when it counted nothing) as a dict sorted by key."""
    return {str(k): int(n) for k, n in sorted((histogram or {}).items())}


def _check_reconciliation(where: str, stats: _Stats, expected_rows: int) -> None:
    problems = []
    if stats.extracted != stats.accepted + stats.rejected + stats.retracted:
        problems.append(
            f"rows extracted {stats.extracted} != accepted {stats.accepted} + rejected "
            f"{stats.rejected} + retracted {stats.retracted}"
        )
    if expected_rows != stats.extracted:
        problems.append(f"extract files hold {expected_rows} rows but {stats.extracted} were read")
    if stats.total_extracted != stats.total_accepted + stats.total_rejected + stats.total_retracted:
        problems.append(
            f"total_amount extracted {stats.total_extracted} != accepted {stats.total_accepted}"
            f" + rejected {stats.total_rejected} + retracted {stats.total_retracted}"
        )
    if problems:
        raise ReconciliationError(f"{where}: " + "; ".join(problems))


_READ_EXTRACT = (
    "read_parquet($files, filename = true, file_row_number = true, union_by_name = true, "
    "hive_partitioning = false)"
)


def _files_source(several_regions: bool) -> str:
    """The extract files' rows with their (file, row) and region: one region's is a constant;
    several regions' files are tagged by a join with the bound file -> region lists."""
    if not several_regions:
        return (
            "SELECT * EXCLUDE (filename, file_row_number), filename AS __src_file, "  # noqa: S608
            f"file_row_number AS __src_row, CAST($region AS VARCHAR) AS {_REGION} "
            f"FROM {_READ_EXTRACT}"
        )
    return (
        "SELECT s.* EXCLUDE (filename, file_row_number), s.filename AS __src_file, "  # noqa: S608
        f"s.file_row_number AS __src_row, m.__map_region AS {_REGION} FROM {_READ_EXTRACT} s "
        "JOIN (SELECT unnest($files) AS __map_file, unnest($file_regions) AS __map_region) m "
        "ON s.filename = m.__map_file"
    )


_EMPTY_EXTRACT = "__empty_extract"


def _empty_source(con: duckdb.DuckDBPyConnection) -> str:
    table = pa.Table.from_batches([], schema=contract.contract_arrow_schema())
    table = table.append_column(_SRC_FILE, pa.array([], pa.string()))
    table = table.append_column(_SRC_ROW, pa.array([], pa.int64()))
    table = table.append_column(_REGION, pa.array([], pa.string()))
    con.register(_EMPTY_EXTRACT, table)
    return f"SELECT * FROM {_EMPTY_EXTRACT}"  # noqa: S608 - a constant name


def _drop_region_objects(connection: TransformConnection) -> None:
    """Drop one pass's temporary tables and views, so the connection takes the next pass (or
    discard the connection if that fails)."""
    con = connection.get()
    try:
        for view in (_REJECTED, _RETRACTED, _NOT_ACCEPTED):
            con.execute(f"DROP VIEW IF EXISTS {view}")
        for table in (_CLASSIFIED, _LOSERS, _DUP_KEYS):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.unregister(_EMPTY_EXTRACT)
    except duckdb.Error:
        connection.discard()


def _parts(directory: Path) -> list[Path]:
    """``part-<i>.parquet`` files of ``directory`` in numeric order."""
    return sorted(directory.glob("part-*.parquet"), key=lambda p: (len(p.name), p.name))


def _publish(staged: Path, final: Path) -> list[Path]:
    """Replace ``final`` by the ``staged`` folder; return its files."""
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    return _parts(final)


_VECTOR = 2048  # DuckDB's vector size: row groups are written in multiples of it
#: Every output file's writer options. A column keeps a dictionary only up to 1024 distinct
#: values per row group (region, status, store, quantity, the batch ids): DuckDB's default
#: tries one for every column and gives up late on the ids, amounts and timestamps; 449K
#: accepted rows: 0.38 -> 0.26 CPU-s for the write, 19.9 -> 22.4 MB, read back as fast.
_PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION snappy, DICTIONARY_SIZE_LIMIT 1024"


def _copy(
    con: duckdb.DuckDBPyConnection,
    select_sql: str,
    directory: Path,
    params: Mapping[str, Any],
    row_group_size: int,
    max_file_rows: int | None,
) -> tuple[int, list[Path]]:
    """Write ``select_sql`` as ``directory/part-<i>.parquet`` (a new folder); (rows, files)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    if max_file_rows is None:
        directory.mkdir()
        target = directory / "part-0.parquet"
        options = f"{_PARQUET_OPTIONS}, ROW_GROUP_SIZE {int(row_group_size)}"
    else:
        target = directory
        # DuckDB rounds row groups up to multiples of 2048 rows; keep them multiples so that
        # files never exceed max_file_rows (for max_file_rows >= 2048).
        rg = max(_VECTOR, min(int(row_group_size), int(max_file_rows)) // _VECTOR * _VECTOR)
        options = (
            f"{_PARQUET_OPTIONS}, ROW_GROUP_SIZE {rg}, "
            f"ROW_GROUPS_PER_FILE {max(1, int(max_file_rows) // rg)}, "
            "FILENAME_PATTERN 'part-{i}'"
        )
    sql = f"COPY ({select_sql}) TO $out_path ({options})"
    row = con.execute(sql, {**_params(sql, params), "out_path": str(target)}).fetchone()
    return (int(row[0]) if row else 0), _parts(directory)


def _copy_by_region(
    con: duckdb.DuckDBPyConnection,
    select_sql: str,
    root: Path,
    regions: Sequence[str],
    params: Mapping[str, Any],
    row_group_size: int,
) -> tuple[int, dict[str, list[Path]]]:
    """Write ``select_sql`` (with a ``region`` column) as ``root/region=R/part-<i>.parquet``
    for every region of ``regions``, in one partitioned COPY; a region without rows gets one
    empty file with the schema. (rows, files by region). The pass's regions together hold at
    most ``max_file_rows`` rows, so no file needs splitting."""
    root.parent.mkdir(parents=True, exist_ok=True)
    sql = (
        f"COPY ({select_sql}) TO $out_path ({_PARQUET_OPTIONS}, "
        f"ROW_GROUP_SIZE {int(row_group_size)}, PARTITION_BY (region), "
        "WRITE_PARTITION_COLUMNS true, FILENAME_PATTERN 'part-{i}')"
    )
    row = con.execute(sql, {**_params(sql, params), "out_path": str(root)}).fetchone()
    files = {r: _parts(root / f"region={r}") for r in regions}
    empty = [r for r, parts in files.items() if not parts]
    if empty:
        # One empty file written by the same writer (the same physical schema), copied.
        template = root / ".empty.parquet"
        empty_sql = (
            f"COPY (SELECT * FROM ({select_sql}) WHERE false) "  # noqa: S608 - constant SQL
            f"TO $out_path ({_PARQUET_OPTIONS})"
        )
        con.execute(empty_sql, {**_params(empty_sql, params), "out_path": str(template)})
        for region in empty:
            target = root / f"region={region}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, target / "part-0.parquet")
            files[region] = _parts(target)
    return (int(row[0]) if row else 0), files


def _where(regions: Sequence[str], business_date: date) -> str:
    """How errors name a pass: ``region us_east, 2026-11-30`` or ``regions a, b, c, ...``."""
    named = f"region {regions[0]}" if len(regions) == 1 else f"regions {', '.join(regions)}"
    return f"{named}, {business_date}"


def _read_footers(
    region: str, business_date: date, files: Sequence[Path]
) -> tuple[int, str | None]:
    """From the extract files' footers (one read each): the rows the extraction wrote, and
    the files' common schema (None: no files, or the files differ; only regions with the
    same schema share a pass, the column plan being built per pass)."""
    try:
        footers = [pq.read_metadata(f) for f in files]
    except (OSError, pa.ArrowInvalid) as e:
        raise TransformInputError(
            f"region {region}, {business_date}: cannot read extract: {e}"
        ) from e
    schemas = {str(m.schema.to_arrow_schema().remove_metadata()) for m in footers}
    return sum(m.num_rows for m in footers), (schemas.pop() if len(schemas) == 1 else None)


@dataclass(frozen=True)
class _Lineage:
    business_date: date
    batch_id: str
    flow_run_id: str


def _run_pass(
    extracts: Mapping[str, Sequence[Path]],
    expected_rows: Mapping[str, int],
    lineage: _Lineage,
    *,
    out_dir: Path,
    connection: TransformConnection,
    row_group_size: int,
    max_file_rows: int | None,
) -> tuple[dict[str, RegionTransformResult], dict[str, ReconciliationError]]:
    """Transform the regions of ``extracts`` (validated names) in one set of statements: one
    classification, one COPY per output kind, grouped statistics. Each region reconciles on its
    own; those that do are published, those that do not are returned as errors. Raises when
    the pass as a whole fails (nothing of it is published then)."""
    started = time.perf_counter()
    regions = list(extracts)
    several = len(regions) > 1
    where = _where(regions, lineage.business_date)
    files = [str(f) for r in regions for f in extracts[r]]
    params: dict[str, Any] = {
        "files": files,
        "business_date": lineage.business_date,
        "batch_id": lineage.batch_id,
        "flow_run_id": lineage.flow_run_id,
    }
    if several:
        params["file_regions"] = [r for r in regions for _ in extracts[r]]
    else:
        params["region"] = regions[0]
    outputs = {
        "accepted": (_accepted_select(), contract.accepted_arrow_schema()),
        "rejects": (_REJECTS_SELECT, contract.reject_arrow_schema()),
        "retractions": (_RETRACTIONS_SELECT, contract.retraction_arrow_schema()),
    }
    # Output goes to hidden folders first and replaces a region's folders only once it has
    # reconciled, so a failed or interrupted run never leaves half a region behind.
    tag = uuid.uuid4().hex[:8]
    staging = {kind: out_dir / kind / f".transform-{tag}.tmp" for kind in _OUTPUTS}
    con = connection.get()
    succeeded = False
    try:
        source_sql = _files_source(several) if files else _empty_source(con)
        try:
            classified = _classify(con, source_sql, params, where)
        except duckdb.Error as e:
            raise TransformInputError(f"{where}: transform of the extract failed: {e}") from e
        written: dict[str, int] = {}
        written_files: dict[str, dict[str, list[Path]]] = {}
        try:
            for kind, (select, schema) in outputs.items():
                select = _all_nullable(select, schema)
                if several:
                    written[kind], written_files[kind] = _copy_by_region(
                        con, select, staging[kind], regions, params, row_group_size
                    )
                else:
                    written[kind], parts = _copy(
                        con,
                        select,
                        staging[kind] / f"region={regions[0]}",
                        params,
                        row_group_size,
                        max_file_rows,
                    )
                    written_files[kind] = {regions[0]: parts}
            stats = _stats(con, source_sql, classified, written_files["accepted"], params)
        except duckdb.Error as e:
            raise TransformError(f"{where}: writing the transform output failed: {e}") from e
        failures: dict[str, ReconciliationError] = {}
        results: dict[str, RegionTransformResult] = {}
        seconds = time.perf_counter() - started
        rows_in_pass = sum(s.extracted for s in stats.values())
        for region in regions:
            try:
                _check_reconciliation(
                    _where([region], lineage.business_date), stats[region], expected_rows[region]
                )
            except ReconciliationError as e:
                if not several:
                    raise
                failures[region] = e
        # what each COPY reported against the rows counted (a pass-level check)
        counted = {
            "accepted": sum(s.accepted for s in stats.values()),
            "rejects": sum(s.rejected for s in stats.values()),
            "retractions": sum(s.retracted for s in stats.values()),
        }
        if written != counted:
            raise ReconciliationError(
                f"{where}: wrote {written['accepted']} accepted / {written['rejects']} rejected "
                f"/ {written['retractions']} retracted rows, expected {counted['accepted']} / "
                f"{counted['rejects']} / {counted['retractions']}"
            )
        for region in regions:
            if region in failures:
                continue
            published = {
                kind: _publish(
                    staging[kind] / f"region={region}", out_dir / kind / f"region={region}"
                )
                for kind in _OUTPUTS
            }
            # a region's share of the pass's time, by its rows (alone: all of it)
            share = stats[region].extracted / rows_in_pass if rows_in_pass else 1 / len(regions)
            results[region] = _result(region, stats[region], published, seconds * share)
        succeeded = True
    finally:
        if succeeded:
            _drop_region_objects(connection)
        else:
            connection.discard()
        for tmp in staging.values():
            shutil.rmtree(tmp, ignore_errors=True)
    for result in results.values():
        logger.info(
            "transform region=%s date=%s: %d extracted, %d accepted, %d rejected, %d retracted "
            "in %.2fs",
            result.region,
            lineage.business_date,
            result.rows_extracted,
            result.rows_accepted,
            result.rows_rejected,
            result.rows_retracted,
            result.seconds,
        )
    return results, failures


def _result(
    region: str, stats: _Stats, files: Mapping[str, list[Path]], seconds: float
) -> RegionTransformResult:
    return RegionTransformResult(
        region=region,
        rows_extracted=stats.extracted,
        rows_accepted=stats.accepted,
        rows_rejected=stats.rejected,
        reasons=stats.reasons,
        null_counts={c: stats.reasons.get(null_reason(c), 0) for c in contract.CRITICAL_COLUMNS},
        total_amount_extracted=stats.total_extracted,
        total_amount_accepted=stats.total_accepted,
        total_amount_rejected=stats.total_rejected,
        accepted_files=files["accepted"],
        reject_files=files["rejects"],
        seconds=seconds,
        rows_retracted=stats.retracted,
        total_amount_retracted=stats.total_retracted,
        retraction_reasons=stats.retraction_reasons,
        retraction_files=files["retractions"],
        source_keys=stats.source_keys,
        accepted_measures=stats.accepted_measures,
    )


def transform_region(
    extract_files: Sequence[Path],
    *,
    region: str,
    business_date: date,
    batch_id: str,
    flow_run_id: str,
    out_dir: Path,
    memory_limit: str = "1GB",
    threads: int = 2,
    row_group_size: int = 122_880,
    max_file_rows: int | None = None,
    temp_dir: Path | None = None,
    connection: TransformConnection | None = None,
) -> RegionTransformResult:
    """Transform one region's extract parquet files into accepted rows and rejects.

    Writes ``out_dir/accepted/region=<region>/part-*.parquet``
    (``contract.accepted_arrow_schema()``) and ``out_dir/rejects/region=<region>/part-*.parquet``
    (``contract.reject_arrow_schema()``),
    replacing earlier output of the same region only once everything reconciled (a failed run
    leaves the previous output untouched). At least one file is always written to each
    folder (empty, with the schema, when there are no rows). ``max_file_rows`` splits the output
    into files of at most that many rows (``None``: one file; DuckDB writes row groups in
    multiples of 2048 rows, so values below 2048 act as 2048). DuckDB spills to
    ``temp_dir`` (default ``out_dir/.duckdb-tmp/<random>``, removed afterwards).
    ``connection`` (:func:`transform_connection`) runs the region on it, with its settings
    (``memory_limit``, ``threads`` and ``temp_dir`` are then ignored), and leaves it open for
    the next region.

    Raises :class:`TransformInputError` when the extract is unreadable or lacks contract columns,
    and :class:`ReconciliationError` when rows or money do not add up.
    """
    if connection is None:
        with transform_connection(
            out_dir, memory_limit=memory_limit, threads=threads, temp_dir=temp_dir
        ) as own:
            return transform_region(
                extract_files,
                region=region,
                business_date=business_date,
                batch_id=batch_id,
                flow_run_id=flow_run_id,
                out_dir=out_dir,
                row_group_size=row_group_size,
                max_file_rows=max_file_rows,
                connection=own,
            )
    region = validate_identifier(region.strip().lower(), "region")
    files = [Path(f) for f in extract_files]
    expected, _ = _read_footers(region, business_date, files)
    results, failures = _run_pass(
        {region: files},
        {region: expected},
        _Lineage(business_date, batch_id, flow_run_id),
        out_dir=Path(out_dir),
        connection=connection,
        row_group_size=row_group_size,
        max_file_rows=max_file_rows,
    )
    if region in failures:
        raise failures[region]
    return results[region]


def _plan_passes(footers: Mapping[str, tuple[int, str | None]], pass_rows: int) -> list[list[str]]:
    """Regions grouped into passes, in order, from their (rows, schema): regions with the same
    schema share a pass while their rows together stay within ``pass_rows``; any other region
    goes alone."""
    rows = {region: n for region, (n, _) in footers.items()}
    passes: list[list[str]] = []
    open_pass: dict[str, tuple[list[str], int]] = {}  # schema -> (regions, rows)
    for region, (_, schema) in footers.items():
        key = schema if rows[region] <= pass_rows else None
        if key is None:
            passes.append([region])
            continue
        regions, total = open_pass.get(key, ([], 0))
        if regions and total + rows[region] > pass_rows:
            regions, total = [], 0
        if not regions:
            passes.append(regions)
        regions.append(region)
        open_pass[key] = (regions, total + rows[region])
    return passes


def transform_regions(
    extracts: Mapping[str, Sequence[Path]],
    *,
    business_date: date,
    batch_id: str,
    flow_run_id: str,
    out_dir: Path,
    connection: TransformConnection,
    pass_rows: int = 500_000,
    row_group_size: int = 122_880,
    max_file_rows: int | None = None,
) -> tuple[dict[str, RegionTransformResult], dict[str, TransformError | OSError]]:
    """Transform several regions' extracts (the regions that landed together) on one
    connection: small regions with the same extract schema share a pass (one set of
    statements for up to ``pass_rows`` rows, capped at ``max_file_rows``, instead of a dozen
    statements each: at 50 regions of 40K rows the fixed cost was most of the transform);
    larger regions run alone. The output of every region is what :func:`transform_region`
    writes for it alone. A pass that fails runs its regions again one by one, so a region's
    bad data fails that region alone. Returns (results, errors) by region."""
    results: dict[str, RegionTransformResult] = {}
    errors: dict[str, TransformError | OSError] = {}
    names: dict[str, list[Path]] = {}
    for region, files in extracts.items():
        names[validate_identifier(region.strip().lower(), "region")] = [Path(f) for f in files]
    footers: dict[str, tuple[int, str | None]] = {}
    for region, files in names.items():
        try:
            footers[region] = _read_footers(region, business_date, files)
        except TransformInputError as e:
            errors[region] = e
    rows = {region: n for region, (n, _) in footers.items()}
    limit = min(pass_rows, max_file_rows) if max_file_rows is not None else pass_rows

    def run(regions: Sequence[str]) -> tuple[dict[str, RegionTransformResult], Mapping[str, Any]]:
        return _run_pass(
            {r: names[r] for r in regions},
            rows,
            _Lineage(business_date, batch_id, flow_run_id),
            out_dir=Path(out_dir),
            connection=connection,
            row_group_size=row_group_size,
            max_file_rows=max_file_rows,
        )

    alone: list[str] = []
    for regions in _plan_passes(footers, limit):
        if len(regions) == 1:
            alone += regions
            continue
        try:
            done, failed = run(regions)
        except (TransformError, OSError) as e:
            logger.warning("%s; transforming them one by one", e)
            done, failed = {}, {}
        results.update(done)
        alone += [r for r in regions if r in failed or r not in done]
    for region in alone:
        try:  # a pass of one region raises its own error
            results.update(run([region])[0])
        except (TransformError, OSError) as e:
            errors[region] = e
    return {r: results[r] for r in names if r in results}, errors


class FrameOutput(NamedTuple):
    accepted: pa.Table
    rejects: pa.Table
    retractions: pa.Table


def transform_frame(
    df: pd.DataFrame | pa.Table,
    *,
    region: str,
    business_date: date,
    batch_id: str = "b",
    flow_run_id: str = "f",
) -> tuple[pa.Table, pa.Table]:
    """(accepted, rejects) of :func:`classify_frame` (the frame's retractions left out)."""
    out = classify_frame(
        df, region=region, business_date=business_date, batch_id=batch_id, flow_run_id=flow_run_id
    )
    return out.accepted, out.rejects


def classify_frame(
    df: pd.DataFrame | pa.Table,
    *,
    region: str,
    business_date: date,
    batch_id: str = "b",
    flow_run_id: str = "f",
) -> FrameOutput:
    """Run the same SQL as :func:`transform_region` on an in-memory frame.

    The frame has the contract columns (any types: drifted columns may be strings) and
    optionally ``extras`` and ``nan_columns``. No reconciliation against files; meant for small
    frames and tests.
    """
    region = validate_identifier(region.strip().lower(), "region")
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    table = table.append_column(_SRC_FILE, pa.array([""] * table.num_rows, pa.string()))
    table = table.append_column(_SRC_ROW, pa.array(range(table.num_rows), pa.int64()))
    table = table.append_column(_REGION, pa.array([region] * table.num_rows, pa.string()))
    params = {
        "region": region,
        "business_date": business_date,
        "batch_id": batch_id,
        "flow_run_id": flow_run_id,
    }
    con = _connect("256MB", 1, None)
    try:
        con.register("__frame", table)
        _classify(con, "SELECT * FROM __frame", params, f"region {region}, {business_date}")
        out = []
        for select, schema in (
            (_accepted_select(), contract.accepted_arrow_schema()),
            (_REJECTS_SELECT, contract.reject_arrow_schema()),
            (_RETRACTIONS_SELECT, contract.retraction_arrow_schema()),
        ):
            rel = con.sql(select, params=_params(select, params))
            out.append(rel.to_arrow_table().cast(schema))
    finally:
        con.close()
    return FrameOutput(out[0], out[1], out[2])
