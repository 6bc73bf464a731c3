"""What every warehouse shares: table definitions (neutral types), load inputs/outputs, errors.

Tables (same names and columns in DuckDB and Snowflake):

- ``sales_fact``: the accepted columns (:data:`retail_etl.contract.ACCEPTED_COLUMNS`) plus
  ``loaded_at`` and ``updated_in_warehouse_at``; key ``(region, sale_id)``.
- ``sales_rejects``: :func:`retail_etl.contract.reject_arrow_schema` columns plus ``rejected_at``.
- ``dq_results``: one row per quality check of a batch (``region = '*'`` for batch-level checks).
- ``sales_retractions``: every row removed from ``sales_fact`` (the row as it was, as JSON),
  with its reason and the source version that retracted it (NULL for ``missing_from_source``).
- ``etl_load_ledger``: one row per (batch, region) outcome; the ``loaded`` row is written in the
  transaction of its MERGE, retractions and rejects.
- ``source_schema_history``: one row each time a region's source schema fingerprint changes
  (region, fingerprint, columns as JSON, differences from the contract, first batch that saw it).

Merge semantics (both engines): ``ON t.region = s.region AND t.sale_id = s.sale_id``; a matched
row is updated when the incoming ``updated_at`` is newer (or the stored one is NULL and the
incoming one is not), or when both ``updated_at`` are equal and any content column differs (a
correction that kept its timestamp); an older version never overwrites a newer one; an unmatched
row is inserted. ``unchanged`` = matched and neither newer nor different. In the same
transaction, the keys the source retracts (and the day's stored keys the source no longer has)
move from ``sales_fact`` to ``sales_retractions``, and the day's rejects of the region are
replaced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import pyarrow as pa

from retail_etl import contract
from retail_etl.records import CHECK_STATUSES
from retail_etl.records import LEDGER_STATUSES as LEDGER_STATUSES
from retail_etl.records import CheckResult as CheckResult
from retail_etl.records import LedgerEntry as LedgerEntry
from retail_etl.records import MergeResult as MergeResult
from retail_etl.records import RegionLoad as RegionLoad
from retail_etl.records import RegionRecord as RegionRecord
from retail_etl.records import loaded_ledger_entry as loaded_ledger_entry
from retail_etl.records import merge_checks as merge_checks
from retail_etl.records import merge_result as merge_result
from retail_etl.records import schema_history_row as schema_history_row
from retail_etl.records import utc_now as utc_now

SALES_FACT = "sales_fact"
SALES_REJECTS = "sales_rejects"
SALES_RETRACTIONS = "sales_retractions"
DQ_RESULTS = "dq_results"
LEDGER = "etl_load_ledger"
SCHEMA_HISTORY = "source_schema_history"


class WarehouseError(RuntimeError):
    """A warehouse operation failed (message names table / region / date, never secrets)."""


class WarehouseBusyError(WarehouseError):
    """The warehouse stayed held by another writer or reader longer than the lock timeout."""


class WarehouseLoadError(WarehouseError):
    """Loading one region's batch failed; nothing of it was merged and no 'loaded' ledger row
    was written (the transaction was rolled back). For a load of several regions in one
    transaction, ``region`` lists them, comma-separated."""

    def __init__(self, message: str, *, region: str, business_date: date, batch_id: str):
        super().__init__(message)
        self.region = region
        self.business_date = business_date
        self.batch_id = batch_id


# --------------------------------------------------------------------------- table definitions


@dataclass(frozen=True)
class WarehouseColumn:
    """A warehouse column with a neutral (Arrow) type; each dialect names the engine type.

    ``json``: the column holds a JSON object (``extras``): text where the engine has no JSON
    type, a semi-structured type where it has one (Snowflake ``VARIANT``)."""

    name: str
    arrow_type: pa.DataType
    json: bool = False


def _columns(schema: pa.Schema) -> tuple[WarehouseColumn, ...]:
    return tuple(WarehouseColumn(f.name, f.type) for f in schema)


def _timestamp(name: str) -> WarehouseColumn:
    return WarehouseColumn(name, pa.timestamp("us", tz="UTC"))


def _varchar(name: str) -> WarehouseColumn:
    return WarehouseColumn(name, pa.string())


def _int(name: str) -> WarehouseColumn:
    return WarehouseColumn(name, pa.int64())


def _double(name: str) -> WarehouseColumn:
    return WarehouseColumn(name, pa.float64())


def _date(name: str) -> WarehouseColumn:
    return WarehouseColumn(name, pa.date32())


#: Columns of the per-batch stage table: exactly the staged parquet (extras still text).
SALES_STAGE_COLUMNS: tuple[WarehouseColumn, ...] = _columns(contract.accepted_arrow_schema())
#: Added to every stage table of a load: the region whose staged files the row was read from
#: (a load's stage tables hold all its regions; the checks are made per region).
STAGE_REGION_COLUMN = _varchar("load_region")
SALES_FACT_COLUMNS: tuple[WarehouseColumn, ...] = (
    *(replace(c, json=c.name == contract.EXTRAS_COLUMN) for c in SALES_STAGE_COLUMNS),
    _timestamp("loaded_at"),
    _timestamp("updated_in_warehouse_at"),
)
REJECTS_STAGE_COLUMNS: tuple[WarehouseColumn, ...] = _columns(contract.reject_arrow_schema())
SALES_REJECTS_COLUMNS: tuple[WarehouseColumn, ...] = (
    *REJECTS_STAGE_COLUMNS,
    _timestamp("rejected_at"),
)
#: The transform's retractions as staged (source version of each retracted key).
RETRACTIONS_STAGE_COLUMNS: tuple[WarehouseColumn, ...] = _columns(
    contract.retraction_arrow_schema()
)
#: One row per row removed from ``sales_fact``.
SALES_RETRACTIONS_COLUMNS: tuple[WarehouseColumn, ...] = (
    _varchar("region"),
    _int("sale_id"),
    _date("sale_date"),  # of the removed row
    _varchar("reason"),  # deleted, status_<status>, missing_from_source, latest_version_rejected
    _varchar("row_values"),  # JSON: the sales_fact row as it was
    _varchar("source_values"),  # JSON: the source version that retracted it (raw text)
    _varchar("batch_id"),
    _varchar("flow_run_id"),
    _timestamp("retracted_at"),
)
DQ_RESULTS_COLUMNS: tuple[WarehouseColumn, ...] = (
    _varchar("batch_id"),
    _date("business_date"),
    _varchar("region"),
    _varchar("check_name"),
    _double("measured"),
    _double("threshold"),
    _varchar("status"),
    _varchar("detail"),
    _varchar("flow_run_id"),
    _timestamp("checked_at"),
)
LEDGER_COLUMNS: tuple[WarehouseColumn, ...] = (
    _varchar("batch_id"),
    _varchar("region"),
    _date("business_date"),
    _varchar("status"),
    _int("rows_extracted"),
    _int("rows_accepted"),
    _int("rows_rejected"),
    _int("rows_inserted"),
    _int("rows_updated"),
    _int("rows_unchanged"),
    _double("extract_seconds"),
    _double("transform_seconds"),
    _double("load_seconds"),
    _varchar("flow_run_id"),
    _varchar("error"),
    _timestamp("started_at"),
    _timestamp("finished_at"),
    # Appended columns (ensure_schema adds them, NULL in older rows):
    _varchar("source_fingerprint"),  # the source's fingerprint of the day, as extracted
    _int("rows_retracted"),  # rows of the extract whose latest version retracts the sale
    _int("rows_deleted"),  # rows this load removed from sales_fact (kept in sales_retractions)
)
#: One row per (region, source schema fingerprint) change: the first batch that saw it.
SCHEMA_HISTORY_COLUMNS: tuple[WarehouseColumn, ...] = (
    _varchar("region"),
    _varchar("fingerprint"),
    _varchar("columns"),  # JSON object: source column -> PostgreSQL type
    _varchar("differences"),  # SchemaDiff.describe(): what differs from the contract
    _varchar("first_seen_batch_id"),
    _timestamp("first_seen_at"),
    _varchar("flow_run_id"),
)

#: Every permanent table and its columns, in DDL order.
TABLES: dict[str, tuple[WarehouseColumn, ...]] = {
    SALES_FACT: SALES_FACT_COLUMNS,
    SALES_REJECTS: SALES_REJECTS_COLUMNS,
    SALES_RETRACTIONS: SALES_RETRACTIONS_COLUMNS,
    DQ_RESULTS: DQ_RESULTS_COLUMNS,
    LEDGER: LEDGER_COLUMNS,
    SCHEMA_HISTORY: SCHEMA_HISTORY_COLUMNS,
}
DQ_RESULT_FIELDS: tuple[str, ...] = tuple(c.name for c in DQ_RESULTS_COLUMNS)


# --------------------------------------------------------------------------- inputs and results


# (what the warehouse takes and gives back lives in retail_etl.records)


def normalize_dq_record(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A ``dq_results`` record as a row tuple; unknown keys and bad statuses are errors."""
    unknown = set(record) - set(DQ_RESULT_FIELDS)
    if unknown:
        raise ValueError(f"dq_results record has unknown field(s): {', '.join(sorted(unknown))}")
    for required in ("batch_id", "business_date", "region", "check_name", "status"):
        if record.get(required) is None:
            raise ValueError(f"dq_results record is missing {required!r}: {dict(record)!r}")
    if record["status"] not in CHECK_STATUSES:
        raise ValueError(
            f"dq_results status {record['status']!r} of check {record['check_name']!r} is not "
            f"one of {', '.join(CHECK_STATUSES)}"
        )
    values = dict(record)
    values.setdefault("checked_at", utc_now())
    for name in ("measured", "threshold"):
        value = values.get(name)
        if value is not None:
            value = float(value)
            values[name] = None if math.isnan(value) else value
    return tuple(values.get(name) for name in DQ_RESULT_FIELDS)


class StepTimer:
    """The step a load is in (for error messages) and the seconds each step took."""

    def __init__(self, first: str = "connect") -> None:
        self.current = first
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def start(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[self.current] = round(now - self._mark, 3)
        self.current, self._mark = name, now


def describe_error(e: BaseException) -> str:
    """First line of an error, bounded; for messages that must not carry whole SQL texts."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}"


def load_error(loads: Sequence[RegionLoad], step: str, e: BaseException) -> WarehouseLoadError:
    """The error of a failed load transaction of one region (or several, of one batch)."""
    first = loads[0]
    regions = ", ".join(repr(b.region) for b in loads)
    what = f"region {regions}" if len(loads) == 1 else f"regions {regions}"
    return WarehouseLoadError(
        f"loading {what} for {first.business_date} (batch {first.batch_id}) "
        f"into sales_fact failed at step '{step}'; rolled back, nothing merged, retracted or "
        f"replaced: {describe_error(e)}",
        region=",".join(b.region for b in loads),
        business_date=first.business_date,
        batch_id=first.batch_id,
    )
