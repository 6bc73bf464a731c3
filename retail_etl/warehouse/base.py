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

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from retail_etl import contract
from retail_etl.settings import validate_identifier

if TYPE_CHECKING:
    from retail_etl.staging import StagedFile

SALES_FACT = "sales_fact"
SALES_REJECTS = "sales_rejects"
SALES_RETRACTIONS = "sales_retractions"
DQ_RESULTS = "dq_results"
LEDGER = "etl_load_ledger"
SCHEMA_HISTORY = "source_schema_history"

LedgerStatus = Literal[
    "loaded",
    "load_failed",
    "extract_failed",
    "transform_failed",
    "gate_failed",
    "verify_failed",
    "deferred",  # the region's business day was not closed yet: not extracted
]
LEDGER_STATUSES: tuple[str, ...] = get_args(LedgerStatus)
DqStatus = Literal["pass", "warn", "fail", "skipped"]
DQ_STATUSES: tuple[str, ...] = get_args(DqStatus)


class WarehouseError(RuntimeError):
    """A warehouse operation failed (message names table / region / date, never secrets)."""


class WarehouseBusyError(WarehouseError):
    """The warehouse stayed held by another writer or reader longer than the lock timeout."""


class WarehouseLoadError(WarehouseError):
    """Loading one region's batch failed; nothing of it was merged and no 'loaded' ledger row
    was written (the transaction was rolled back)."""

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
    _varchar("source_fingerprint"),  # the source's fingerprint of the day, read before extract
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


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerEntry:
    """One row of ``etl_load_ledger`` (the latest row per (region, date) is its state)."""

    batch_id: str
    region: str
    business_date: date
    status: LedgerStatus
    rows_extracted: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None
    rows_inserted: int | None = None
    rows_updated: int | None = None
    rows_unchanged: int | None = None
    extract_seconds: float | None = None
    transform_seconds: float | None = None
    load_seconds: float | None = None
    flow_run_id: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    source_fingerprint: str | None = None
    rows_retracted: int | None = None
    rows_deleted: int | None = None

    def validated(self) -> LedgerEntry:
        """Check status and identifiers; fill ``finished_at`` with now if missing."""
        if self.status not in LEDGER_STATUSES:
            raise ValueError(
                f"ledger status {self.status!r} for region {self.region!r} "
                f"{self.business_date} is not one of {', '.join(LEDGER_STATUSES)}"
            )
        validate_identifier(self.region, "region")
        if self.finished_at is None:
            return replace(self, finished_at=utc_now())
        return self

    def row(self) -> tuple[Any, ...]:
        """Values in :data:`LEDGER_COLUMNS` order."""
        values = asdict(self)
        return tuple(values[c.name] for c in LEDGER_COLUMNS)


@dataclass(frozen=True)
class RegionLoad:
    """One region's batch, staged and ready to load: accepted rows (``files``), rejects and
    retractions, with the counts for its ledger row."""

    region: str
    business_date: date
    batch_id: str
    files: tuple[StagedFile, ...]
    flow_run_id: str | None = None
    rows_extracted: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None
    extract_seconds: float | None = None
    transform_seconds: float | None = None
    started_at: datetime | None = None
    #: the source's fingerprint of (region, business_date), read before the extract
    source_fingerprint: str | None = None
    reject_files: tuple[StagedFile, ...] = ()
    retraction_files: tuple[StagedFile, ...] = ()
    rows_retracted: int | None = None

    @property
    def staged_rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class MergeResult:
    """What one region's MERGE did. ``inserted + updated + unchanged + duplicate_rows ==
    staged_rows`` (duplicates of a key inside the batch are dropped before the MERGE)."""

    region: str
    business_date: date
    batch_id: str
    staged_rows: int
    inserted: int
    updated: int
    unchanged: int
    duplicate_rows: int
    seconds: float
    rows_accepted: int | None = None
    #: rows removed from sales_fact (and recorded in sales_retractions)
    deleted: int = 0
    #: rejects that replaced the day's rejects of the region
    rejects: int = 0


@dataclass(frozen=True)
class CheckResult:
    """One post-load check (``region='*'`` for batch-level checks)."""

    name: str
    region: str
    measured: float
    expected: float
    passed: bool
    detail: str = ""

    def to_dq_record(
        self, batch_id: str, business_date: date, flow_run_id: str | None
    ) -> dict[str, Any]:
        """As a ``dq_results`` row (status 'pass' or 'fail', threshold = expected)."""
        return {
            "batch_id": batch_id,
            "business_date": business_date,
            "region": self.region,
            "check_name": self.name,
            "measured": float(self.measured),
            "threshold": float(self.expected),
            "status": "pass" if self.passed else "fail",
            "detail": self.detail,
            "flow_run_id": flow_run_id,
            "checked_at": utc_now(),
        }


@dataclass(frozen=True)
class TransformCounts:
    """Per-region counts from the transform, for ``extracted = accepted + rejected + retracted``."""

    rows_extracted: int
    rows_accepted: int
    rows_rejected: int
    rows_retracted: int = 0


def merge_checks(
    merge_results: Sequence[MergeResult],
    transform_counts: Mapping[str, TransformCounts] | None = None,
) -> list[CheckResult]:
    """Checks computed from counts only (no query): per region

    - ``merge_reconciles``: inserted + updated + unchanged == staged rows (duplicates of a key
      inside the batch make this fail: they were dropped, not merged);
    - ``batch_duplicate_keys``: 0 duplicate (region, sale_id) inside the staged batch;
    - ``staged_equals_accepted``: staged rows == the transform's accepted rows (when known);
    - ``extracted_equals_accepted_rejected_retracted`` (when ``transform_counts`` is given).
    """
    checks: list[CheckResult] = []
    for r in merge_results:
        merged = r.inserted + r.updated + r.unchanged
        checks.append(
            CheckResult(
                "merge_reconciles",
                r.region,
                merged,
                r.staged_rows,
                merged == r.staged_rows,
                f"inserted {r.inserted} + updated {r.updated} + unchanged {r.unchanged} = {merged}; "
                f"staged {r.staged_rows}",
            )
        )
        checks.append(
            CheckResult(
                "batch_duplicate_keys",
                r.region,
                r.duplicate_rows,
                0,
                r.duplicate_rows == 0,
                f"{r.duplicate_rows} staged row(s) repeated a (region, sale_id) of the batch and "
                "were dropped before the MERGE (latest updated_at kept)"
                if r.duplicate_rows
                else "no duplicate key in the staged batch",
            )
        )
        accepted = r.rows_accepted
        if transform_counts and r.region in transform_counts:
            accepted = transform_counts[r.region].rows_accepted
        if accepted is not None:
            checks.append(
                CheckResult(
                    "staged_equals_accepted",
                    r.region,
                    r.staged_rows,
                    accepted,
                    r.staged_rows == accepted,
                    f"staged {r.staged_rows} row(s), transform accepted {accepted}",
                )
            )
    for region, counts in sorted((transform_counts or {}).items()):
        total = counts.rows_accepted + counts.rows_rejected + counts.rows_retracted
        checks.append(
            CheckResult(
                "extracted_equals_accepted_rejected_retracted",
                region,
                counts.rows_extracted,
                total,
                counts.rows_extracted == total,
                f"extracted {counts.rows_extracted}, accepted {counts.rows_accepted} + "
                f"rejected {counts.rows_rejected} + retracted {counts.rows_retracted} = {total}",
            )
        )
    return checks


def normalize_dq_record(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A ``dq_results`` record as a row tuple; unknown keys and bad statuses are errors."""
    unknown = set(record) - set(DQ_RESULT_FIELDS)
    if unknown:
        raise ValueError(f"dq_results record has unknown field(s): {', '.join(sorted(unknown))}")
    for required in ("batch_id", "business_date", "region", "check_name", "status"):
        if record.get(required) is None:
            raise ValueError(f"dq_results record is missing {required!r}: {dict(record)!r}")
    if record["status"] not in DQ_STATUSES:
        raise ValueError(
            f"dq_results status {record['status']!r} of check {record['check_name']!r} is not "
            f"one of {', '.join(DQ_STATUSES)}"
        )
    values = dict(record)
    values.setdefault("checked_at", utc_now())
    for name in ("measured", "threshold"):
        value = values.get(name)
        if value is not None:
            value = float(value)
            values[name] = None if math.isnan(value) else value
    return tuple(values.get(name) for name in DQ_RESULT_FIELDS)


def merge_result(
    batch: RegionLoad,
    staged: int,
    inserted: int,
    updated: int,
    unchanged: int,
    duplicates: int,
    started: float,
    *,
    deleted: int = 0,
    rejects: int = 0,
) -> MergeResult:
    """The :class:`MergeResult` of a committed region load (both engines), logged."""
    result = MergeResult(
        region=batch.region,
        business_date=batch.business_date,
        batch_id=batch.batch_id,
        staged_rows=staged,
        inserted=inserted,
        updated=updated,
        unchanged=unchanged,
        duplicate_rows=duplicates,
        seconds=time.perf_counter() - started,
        rows_accepted=batch.rows_accepted,
        deleted=deleted,
        rejects=rejects,
    )
    logging.getLogger("retail_etl.warehouse").info(
        "loaded %s %s: %d staged, %d inserted, %d updated, %d unchanged, %d retracted from "
        "sales_fact, %d rejects in %.2f s",
        batch.region,
        batch.business_date,
        staged,
        inserted,
        updated,
        unchanged,
        deleted,
        rejects,
        result.seconds,
    )
    return result


def loaded_ledger_entry(
    batch: RegionLoad,
    inserted: int,
    updated: int,
    unchanged: int,
    seconds: float,
    started_at: datetime,
    deleted: int = 0,
) -> LedgerEntry:
    """The 'loaded' ledger row of a region load (written in the MERGE's transaction)."""
    return LedgerEntry(
        batch_id=batch.batch_id,
        region=batch.region,
        business_date=batch.business_date,
        status="loaded",
        rows_extracted=batch.rows_extracted,
        rows_accepted=batch.rows_accepted,
        rows_rejected=batch.rows_rejected,
        rows_inserted=inserted,
        rows_updated=updated,
        rows_unchanged=unchanged,
        extract_seconds=batch.extract_seconds,
        transform_seconds=batch.transform_seconds,
        load_seconds=seconds,
        flow_run_id=batch.flow_run_id,
        started_at=started_at,
        finished_at=utc_now(),
        source_fingerprint=batch.source_fingerprint,
        rows_retracted=batch.rows_retracted,
        rows_deleted=deleted,
    )


def schema_history_row(
    region: str,
    fingerprint: str,
    columns: Mapping[str, str],
    differences: str,
    batch_id: str,
    flow_run_id: str | None,
) -> tuple[Any, ...]:
    """A ``source_schema_history`` row in :data:`SCHEMA_HISTORY_COLUMNS` order."""
    validate_identifier(region, "region")
    if not fingerprint:
        raise ValueError(f"empty schema fingerprint for region {region!r}")
    return (
        region,
        fingerprint,
        json.dumps(dict(columns), sort_keys=True),
        differences,
        batch_id,
        utc_now(),
        flow_run_id,
    )


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


def load_error(batch: RegionLoad, step: str, e: BaseException) -> WarehouseLoadError:
    return WarehouseLoadError(
        f"loading region {batch.region!r} for {batch.business_date} (batch {batch.batch_id}) "
        f"into sales_fact failed at step '{step}'; rolled back, nothing merged, retracted or "
        f"replaced: {describe_error(e)}",
        region=batch.region,
        business_date=batch.business_date,
        batch_id=batch.batch_id,
    )
