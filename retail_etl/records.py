"""One record per region through a run, and what the warehouse takes and gives back.

A region's :class:`RegionRecord` carries it through the stages (counts, timings, status,
error); :func:`ledger_entry` derives its ``etl_load_ledger`` row. The warehouse takes a
:class:`RegionLoad` (what to load: identity, staged files, and the record its 'loaded' row is
derived from) and gives back a :class:`MergeResult` (what the MERGE did).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from retail_etl import humanize
from retail_etl.settings import validate_identifier

if TYPE_CHECKING:
    from retail_etl.staging import StagedFile

#: Where a region's run ended: the statuses of ``etl_load_ledger`` rows.
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
#: A region's status during a run: on its way (the first three), or where it ended.
RegionStatus = Literal["pending", "extracted", "transformed", LedgerStatus]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RegionRecord:
    """Everything the run knows about one region: for the summary, the ledger and alerts."""

    region: str
    status: RegionStatus = "pending"
    error: str | None = None
    rows_extracted: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    #: rows whose latest version retracts the sale (refunded, cancelled, deleted, ...)
    rows_retracted: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    #: rows the load removed from sales_fact (kept in sales_retractions)
    rows_deleted: int = 0
    extract_seconds: float = 0.0
    transform_seconds: float = 0.0
    load_seconds: float = 0.0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    #: the source's fingerprint of the day, read in the extraction's snapshot (or before it)
    source_fingerprint: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """One row of ``etl_load_ledger`` (the latest row per (region, date) is its state).
    The fields are the table's columns, in its order."""

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
        """Values in column order."""
        return astuple(self)


def ledger_entry(
    record: RegionRecord,
    *,
    batch_id: str,
    business_date: date,
    flow_run_id: str | None,
    error: str | None = None,
    started_at: datetime | None = None,
) -> LedgerEntry:
    """The ledger row of a region's record (its status must be where the region ended);
    ``error`` replaces the record's (a failed gate or check is named once per run)."""
    if record.status not in LEDGER_STATUSES:
        raise ValueError(
            f"region {record.region!r} {business_date} is still {record.status!r}: "
            "no ledger row before its run ends"
        )
    loaded = record.status == "loaded"
    return LedgerEntry(
        batch_id=batch_id,
        region=record.region,
        business_date=business_date,
        status=record.status,  # type: ignore[arg-type]  # checked above
        rows_extracted=record.rows_extracted,
        rows_accepted=record.rows_accepted,
        rows_rejected=record.rows_rejected,
        rows_inserted=record.rows_inserted if loaded else None,
        rows_updated=record.rows_updated if loaded else None,
        rows_unchanged=record.rows_unchanged if loaded else None,
        extract_seconds=record.extract_seconds,
        transform_seconds=record.transform_seconds,
        load_seconds=record.load_seconds if loaded else None,
        flow_run_id=flow_run_id,
        error=error if error is not None else record.error,
        started_at=started_at,
        finished_at=utc_now(),
        source_fingerprint=record.source_fingerprint,
        rows_retracted=record.rows_retracted,
        rows_deleted=record.rows_deleted if loaded else None,
    )


@dataclass(frozen=True)
class RegionLoad:
    """What to load: one region's batch, staged (accepted rows in ``files``, rejects,
    retractions), and its record, from which the 'loaded' ledger row is derived."""

    region: str
    business_date: date
    batch_id: str
    files: tuple[StagedFile, ...]
    flow_run_id: str | None = None
    reject_files: tuple[StagedFile, ...] = ()
    retraction_files: tuple[StagedFile, ...] = ()
    record: RegionRecord | None = None
    started_at: datetime | None = None

    @property
    def staged_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def rows_accepted(self) -> int | None:
        """The transform's accepted rows, when the record is known."""
        return self.record.rows_accepted if self.record is not None else None


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


#: A check's verdict: the ``status`` of ``dq_results`` rows.
CheckStatus = Literal["pass", "warn", "fail", "skipped"]
CHECK_STATUSES: tuple[str, ...] = get_args(CheckStatus)
#: Checks whose measured value and threshold are shares (shown as percentages).
RATIO_CHECKS = ("null_share_", "reject_rate", "history_volume", "missing_from_source_share")


def format_measure(name: str, value: float | None, *, ratio: bool | None = None) -> str:
    """A check's measured value or threshold as people read it: ratios as percentages, counts
    with separators. ``ratio`` overrides what the name says (:attr:`CheckResult.is_ratio`)."""
    if value is None:
        return "-"
    if name.startswith(RATIO_CHECKS) if ratio is None else ratio:
        return humanize.share(value)
    if float(value).is_integer():
        return humanize.count(value)
    return f"{value:,.4g}"


@dataclass(frozen=True)
class CheckResult:
    """One check of a batch: a quality-gate check before the load or a post-load check
    (``region='*'`` for batch-level checks); one ``dq_results`` row."""

    name: str
    region: str
    measured: float
    threshold: float | None
    status: CheckStatus
    detail: str = ""

    @classmethod
    def judged(
        cls, name: str, region: str, measured: float, threshold: float, ok: bool, detail: str
    ) -> CheckResult:
        """A pass/fail check: ``ok`` decides the status."""
        return cls(name, region, measured, threshold, "pass" if ok else "fail", detail)

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    @property
    def is_ratio(self) -> bool:
        """Whether measured and threshold are ratios. A skipped ``history_volume`` has no
        deviation: it measures the region's accepted rows (and has no threshold)."""
        if self.name == "history_volume" and self.threshold is None:
            return False
        return self.name.startswith(RATIO_CHECKS)

    @property
    def measured_text(self) -> str:
        return format_measure(self.name, self.measured, ratio=self.is_ratio)

    @property
    def threshold_text(self) -> str:
        return format_measure(self.name, self.threshold, ratio=self.is_ratio)

    def dq_record(
        self, batch_id: str, business_date: date, flow_run_id: str | None = None
    ) -> dict[str, Any]:
        """As a ``dq_results`` row (the warehouse stamps ``checked_at``)."""
        return {
            "batch_id": batch_id,
            "business_date": business_date,
            "region": self.region,
            "check_name": self.name,
            "measured": float(self.measured),
            "threshold": None if self.threshold is None else float(self.threshold),
            "status": self.status,
            "detail": self.detail,
            "flow_run_id": flow_run_id,
        }


def merge_checks(
    merge_results: Sequence[MergeResult],
    records: Mapping[str, RegionRecord] | None = None,
) -> list[CheckResult]:
    """Checks computed from counts only (no query): per region

    - ``merge_reconciles``: inserted + updated + unchanged == staged rows (duplicates of a key
      inside the batch make this fail: they were dropped, not merged);
    - ``batch_duplicate_keys``: 0 duplicate (region, sale_id) inside the staged batch;
    - ``staged_equals_accepted``: staged rows == the transform's accepted rows (when known);
    - ``extracted_equals_accepted_rejected_retracted``: the regions' ``records`` (when given).
    """
    checks: list[CheckResult] = []
    for r in merge_results:
        merged = r.inserted + r.updated + r.unchanged
        checks.append(
            CheckResult.judged(
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
            CheckResult.judged(
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
        if records and r.region in records:
            accepted = records[r.region].rows_accepted
        if accepted is not None:
            checks.append(
                CheckResult.judged(
                    "staged_equals_accepted",
                    r.region,
                    r.staged_rows,
                    accepted,
                    r.staged_rows == accepted,
                    f"staged {r.staged_rows} row(s), transform accepted {accepted}",
                )
            )
    for region, counts in sorted((records or {}).items()):
        total = counts.rows_accepted + counts.rows_rejected + counts.rows_retracted
        checks.append(
            CheckResult.judged(
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


def transaction_groups(loads: Sequence[RegionLoad], max_rows: int) -> list[list[RegionLoad]]:
    """The loads in order, in groups of at most ``max_rows`` staged rows (a region above it
    alone): each group one load transaction. At 20M rows one transaction of four 5M-row
    regions took 58.9 s against 47.6 s for the four alone; 50 small regions together cost a
    quarter of 50 transactions."""
    groups: list[list[RegionLoad]] = []
    rows = 0
    for load in loads:
        if groups and rows + load.staged_rows <= max_rows:
            groups[-1].append(load)
            rows += load.staged_rows
        else:
            groups.append([load])
            rows = load.staged_rows
    return groups


def merge_result(
    batch: RegionLoad,
    staged: int,
    inserted: int,
    updated: int,
    unchanged: int,
    duplicates: int,
    seconds: float,
    *,
    deleted: int = 0,
    rejects: int = 0,
) -> MergeResult:
    """The :class:`MergeResult` of a committed region load (both engines), logged; ``seconds``
    is its transaction's (shared by the regions loaded together)."""
    result = MergeResult(
        region=batch.region,
        business_date=batch.business_date,
        batch_id=batch.batch_id,
        staged_rows=staged,
        inserted=inserted,
        updated=updated,
        unchanged=unchanged,
        duplicate_rows=duplicates,
        seconds=seconds,
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
    """The 'loaded' ledger row of a region load (written in the MERGE's transaction): its
    record with what the MERGE did."""
    record = replace(
        batch.record or RegionRecord(batch.region),
        status="loaded",
        error=None,
        rows_inserted=inserted,
        rows_updated=updated,
        rows_unchanged=unchanged,
        rows_deleted=deleted,
        load_seconds=seconds,
    )
    return ledger_entry(
        record,
        batch_id=batch.batch_id,
        business_date=batch.business_date,
        flow_run_id=batch.flow_run_id,
        started_at=started_at,
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
