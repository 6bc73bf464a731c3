"""One run of the daily pipeline: its identity, and the summary it ends with.

Plain code, no Prefect: the flows build a :class:`RunContext`, collect step results
into a :class:`RunSummary`, and let :func:`RunSummary.outcome` decide the final state.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from retail_etl import humanize
from retail_etl.contract import BATCH_REGION
from retail_etl.records import (
    LEDGER_STATUSES,
    LedgerEntry,
    RegionRecord,
    RegionStatus,
    ledger_entry,
)
from retail_etl.redact import scrub_secrets
from retail_etl.settings import Settings, validate_identifier


class PipelineRunFailed(Exception):
    """The data of a Failed run: its message, with the run's summary attached.

    A Failed state must carry an exception; this one lets callers (CLI, backfill, tests)
    still read what happened to every region.
    """

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (PipelineRunFailed, (str(self), self.summary))


def summary_from_result(result: object) -> RunSummary | None:
    """The :class:`RunSummary` of a finished run's result (Completed or Failed), if any."""
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, PipelineRunFailed):
        return result.summary
    return None


@dataclass(frozen=True)
class RunContext:
    run_date: date
    regions: tuple[str, ...]  # the regions this run extracts (closed ones)
    batch_id: str
    flow_run_id: str
    run_dir: Path

    @property
    def extract_dir(self) -> Path:
        return self.run_dir / "extract"


def new_batch_id(run_date: date) -> str:
    """``YYYYMMDD_<12 hex>``: sortable by date, unique per run, a safe identifier part."""
    return f"{run_date:%Y%m%d}_{uuid.uuid4().hex[:12]}"


def batch_run_date(batch_id: str) -> date | None:
    """The run date a :func:`new_batch_id` id starts with; None for an id of another form."""
    try:
        return datetime.strptime(batch_id[:9], "%Y%m%d_").date()
    except ValueError:
        return None


def new_run_context(
    settings: Settings,
    run_date: date | None,
    regions: Sequence[str] | None,
    flow_run_id: str | None,
    scheduled_start: datetime | None = None,
) -> RunContext:
    """Resolve the parameters of a run. Defaults: the day before the run's scheduled start time
    in ``RETAIL_ETL_TIMEZONE`` (:func:`~retail_etl.closing.business_date_for`; now when not
    given), all configured regions."""
    from retail_etl.closing import business_date_for, now_utc

    business_date = run_date or business_date_for(scheduled_start or now_utc(), settings.timezone)
    chosen = list(regions) if regions else settings.regions
    configured = set(settings.regions)
    unknown = [r for r in chosen if r not in configured]
    if unknown:
        raise ValueError(
            f"unknown region(s) {', '.join(unknown)}; configured regions are "
            f"{', '.join(settings.regions)} (RETAIL_ETL_REGIONS)"
        )
    for region in chosen:
        validate_identifier(region, "region")
    batch_id = new_batch_id(business_date)
    run_dir = settings.runs_dir / business_date.isoformat() / batch_id
    return RunContext(
        run_date=business_date,
        regions=tuple(dict.fromkeys(chosen)),
        batch_id=batch_id,
        flow_run_id=flow_run_id or "local",
        run_dir=run_dir,
    )


#: The counts shown per region (CLI summary, the run's summary artifact): label -> attribute
#: of :class:`RegionRecord`. A new count is one line here.
SUMMARY_COUNTS: dict[str, str] = {
    "extracted": "rows_extracted",
    "accepted": "rows_accepted",
    "rejected": "rows_rejected",
    "retracted": "rows_retracted",
    "inserted": "rows_inserted",
    "updated": "rows_updated",
    "removed": "rows_deleted",
}

#: Longest region error quoted in a one-line state message (the alert and the artifacts
#: carry more).
STATE_ERROR_CHARS = 600

#: The detail artifacts of a run, in pipeline order: label -> (key prefix, where it is).
DETAIL_ARTIFACTS: dict[str, tuple[str, str]] = {
    "extract": ("extract", "this run"),
    "transform": ("transform", "subflow transform"),
    "quality": ("quality", "subflow validate"),
    "load": ("load", "subflow load"),
    "alert": ("alert", "subflow alert"),
}


@dataclass
class RunSummary:
    run_date: date
    batch_id: str
    flow_run_id: str
    regions: dict[str, RegionRecord]
    gate_verdict: Literal["pass", "fail", "not_run"] = "not_run"
    failing_checks: list[str] = field(default_factory=list)
    verification_failures: list[str] = field(default_factory=list)
    ledger_errors: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warehouse: str = ""
    #: New source schemas that differ from the contract (warned once; not a failure).
    schema_warnings: list[str] = field(default_factory=list)
    #: Earlier (region, date) pairs this run re-checked and reprocessed (lookback):
    #: "<date> <region>" -> status after the reprocessing, and why they were redone.
    lookback: dict[str, str] = field(default_factory=dict)
    lookback_reasons: dict[str, str] = field(default_factory=dict)
    #: Regions whose source fingerprint could not be read (lookback skipped their changes).
    fingerprint_errors: dict[str, str] = field(default_factory=dict)
    #: Start of the run's artifact keys (``Settings.env_prefix``: ``prod-`` in prod).
    artifact_prefix: str = ""
    #: Merged regions a failed post-load check speaks of -> those checks (their ledger error).
    check_failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, ctx: RunContext, *, artifact_prefix: str = "") -> RunSummary:
        return cls(
            run_date=ctx.run_date,
            batch_id=ctx.batch_id,
            flow_run_id=ctx.flow_run_id,
            regions={r: RegionRecord(r) for r in ctx.regions},
            artifact_prefix=artifact_prefix,
        )

    # -- recording step results (called by the parent flow, in order) --------------------

    def record_deferred(self, deferrals: Sequence[Any]) -> None:
        """Regions whose business day is not closed yet (:class:`retail_etl.closing.Deferral`)."""
        for deferral in deferrals:
            outcome = self.regions[deferral.region]
            outcome.status = "deferred"
            outcome.error = deferral.reason

    def record_fingerprints(
        self, fingerprints: Mapping[str, str], errors: Mapping[str, str]
    ) -> None:
        """The sources' fingerprints of the day (for the ledger), read in the extraction's
        snapshot or before it; the regions whose fingerprints could not be read."""
        for region, fingerprint in fingerprints.items():
            self.regions[region].source_fingerprint = fingerprint
        self.fingerprint_errors.update({r: scrub_secrets(e) for r, e in errors.items()})

    def record_lookback(self, results: Sequence[Any], reasons: Mapping[str, str]) -> None:
        """Results (:class:`retail_etl.backfill.BackfillResult`) of the reprocessed pairs."""
        for result in results:
            for region in result.regions:
                key = f"{result.run_date} {region}"
                self.lookback[key] = result.statuses.get(region, "unknown")
                self.lookback_reasons[key] = reasons.get(key, "")

    def record_extracts(self, extracts: Mapping[str, Any], errors: Mapping[str, str]) -> None:
        for region, result in extracts.items():
            outcome = self.regions[region]
            outcome.status = "extracted"
            outcome.rows_extracted = result.rows
            outcome.extract_seconds = result.seconds
        self._fail(errors, "extract_failed")

    def record_transforms(self, results: Mapping[str, Any], errors: Mapping[str, str]) -> None:
        for region, result in results.items():
            outcome = self.regions[region]
            outcome.status = "transformed"
            outcome.rows_extracted = result.rows_extracted
            outcome.rows_accepted = result.rows_accepted
            outcome.rows_rejected = result.rows_rejected
            outcome.rows_retracted = result.rows_retracted
            outcome.transform_seconds = result.seconds
            outcome.reject_reasons = dict(result.reasons)
        self._fail(errors, "transform_failed")

    def _fail(self, errors: Mapping[str, str], status: RegionStatus) -> None:
        """Mark regions failed; their errors are scrubbed here, the one place every region
        error passes before it reaches the state message, logs, alerts and the ledger."""
        for region, error in errors.items():
            self.regions[region].status = status
            self.regions[region].error = scrub_secrets(error)

    def fail_regions(self, regions: Sequence[str], status: RegionStatus, error: str) -> None:
        """A step that broke as a whole (not region by region) fails every region it held."""
        self._fail(dict.fromkeys(regions, error), status)

    def record_gate(self, report: Any) -> None:
        """Take the quality report's verdict; a failed gate stops every transformed region."""
        self.gate_verdict = report.verdict
        self.failing_checks = [_describe_check(c) for c in report.failing]
        if report.verdict == "fail":
            for outcome in self.regions.values():
                if outcome.status == "transformed":
                    outcome.status = "gate_failed"

    def record_load(
        self,
        merges: Mapping[str, Any],
        errors: Mapping[str, str],
        failed_checks: Sequence[Any],
    ) -> None:
        """A merged region a failed post-load check speaks of (a batch-level one: every
        merged region) is ``verify_failed``: the MERGE committed, but the day is not trusted."""
        for region, merge in merges.items():
            outcome = self.regions[region]
            outcome.status = "loaded"
            outcome.rows_inserted = merge.inserted
            outcome.rows_updated = merge.updated
            outcome.rows_unchanged = merge.unchanged
            outcome.rows_deleted = merge.deleted
            outcome.load_seconds = merge.seconds
        self._fail(errors, "load_failed")
        self.verification_failures.extend(
            f"{check.region}/{check.name}: {check.detail}" for check in failed_checks
        )
        for region in merges:
            failed = [c for c in failed_checks if c.region in (region, BATCH_REGION)]
            if failed:
                self.regions[region].status = "verify_failed"
                self.check_failures[region] = "; ".join(f"{c.name}: {c.detail}" for c in failed)

    def ledger_entries(self) -> list[LedgerEntry]:
        """The ledger rows the run writes when it ends: one per region whose run ended, but
        not the loaded ones (their row was written in the transaction of their MERGE)."""
        gate = "quality gate failed: " + ", ".join(self.failing_checks)
        return [
            ledger_entry(
                record,
                batch_id=self.batch_id,
                business_date=self.run_date,
                flow_run_id=self.flow_run_id,
                error=self.check_failures.get(record.region)
                or (gate if record.status == "gate_failed" and record.error is None else None),
            )
            for record in self.regions.values()
            if record.status in LEDGER_STATUSES and record.status != "loaded"
        ]

    @property
    def failed_regions(self) -> list[RegionRecord]:
        return [o for o in self.regions.values() if o.status.endswith("_failed")]

    @property
    def needs_alert(self) -> bool:
        """Anything but a clean run (see :meth:`outcome`), or a source schema change (a
        warning, sent once per change)."""
        ok, _ = self.outcome()
        return not ok or bool(self.schema_warnings)

    @property
    def succeeded(self) -> bool:
        """Every region loaded or deferred (not due yet), and every lookback pair loaded."""
        regions_ok = all(o.status in ("loaded", "deferred") for o in self.regions.values())
        return regions_ok and all(s in ("loaded", "deferred") for s in self.lookback.values())

    def outcome(self) -> tuple[bool, str]:
        """(succeeded, one-line message for the flow run's final state)."""
        loaded = [o.region for o in self.regions.values() if o.status == "loaded"]
        parts: list[str] = []
        for status, label in (
            ("extract_failed", "extraction failed for "),
            ("transform_failed", "transform failed for "),
        ):
            failed = [o for o in self.regions.values() if o.status == status]
            if failed:
                parts.append(label + _by_error(failed))
        if self.gate_verdict == "fail":
            parts.append("quality gate failed: " + ", ".join(self.failing_checks))
        load_failed = [o for o in self.regions.values() if o.status == "load_failed"]
        if load_failed:
            parts.append("load failed for " + _by_error(load_failed))
        if self.verification_failures:
            parts.append(
                "post-load verification failed: "
                + ", ".join(_short(v) for v in self.verification_failures)
            )
        if self.ledger_errors:
            parts.append(
                "the load ledger could not be written: "
                + "; ".join(_short(e) for e in self.ledger_errors)
            )
        lookback_failed = [
            f"{k}: {v}" for k, v in self.lookback.items() if v not in ("loaded", "deferred")
        ]
        if lookback_failed:
            parts.append("lookback reprocessing failed for " + "; ".join(lookback_failed))
        deferred = [o.region for o in self.regions.values() if o.status == "deferred"]
        if not parts and not loaded and not deferred:
            parts.append("no region was loaded")
        later = f"; deferred (day not closed): {', '.join(deferred)}" if deferred else ""
        redone = [k for k, v in self.lookback.items() if v == "loaded"]
        lookback = f"; lookback reprocessed {', '.join(redone)}" if redone else ""
        if not parts:
            rows = sum(o.rows_accepted for o in self.regions.values())
            schema = (
                f"; {len(self.schema_warnings)} source schema change(s), see the alert"
                if self.schema_warnings
                else ""
            )
            return True, (
                f"{self.run_date}: loaded {len(loaded)} region(s), {rows:,} accepted rows "
                f"(batch {self.batch_id}){later}{lookback}{schema}"
            )
        tail = f"; loaded: {', '.join(loaded)}" if loaded else "; nothing loaded"
        return False, f"{self.run_date}: " + "; ".join(parts) + tail + later + lookback

    def ordered_regions(self) -> list[RegionRecord]:
        """Failed regions first (in run order), then the others."""
        outcomes = list(self.regions.values())
        return [o for o in outcomes if o.status.endswith("_failed")] + [
            o for o in outcomes if not o.status.endswith("_failed")
        ]

    def render_text(self) -> str:
        """A short human summary for the CLI: outcome, rows per region, what took how long."""
        ok, message = self.outcome()
        header = f"{'region':<10} {'status':<16}" + "".join(
            f" {label:>10}" for label in SUMMARY_COUNTS
        )
        lines = [("OK  " if ok else "FAIL ") + message, "", header]
        for o in self.ordered_regions():
            lines.append(
                f"{o.region:<10} {o.status:<16}"
                + "".join(
                    f" {humanize.count(getattr(o, attr)):>10}" for attr in SUMMARY_COUNTS.values()
                )
            )
        for o in self.ordered_regions():
            if o.error:
                lines.append(f"  {o.region}: {o.error}")
        timings = timing_lines(self.stage_seconds)
        if timings:
            lines += ["", "time (wall clock):"] + [f"  {line}" for line in timings]
        lines.extend(f"schema change: {w}" for w in self.schema_warnings)
        for key, status in self.lookback.items():
            lines.append(f"lookback {key}: {status} ({self.lookback_reasons.get(key, '')})")
        for region, error in self.fingerprint_errors.items():
            lines.append(f"  {region}: source fingerprint not read ({error})")
        if self.warehouse:
            lines.append(f"warehouse: {self.warehouse}")
        return "\n".join(lines)

    def detail_artifact_keys(self, *, alerted: bool) -> list[tuple[str, str]]:
        """(key, where it is) of the detail artifacts this run published, in pipeline order."""
        day = self.run_date.isoformat()
        statuses = {o.status for o in self.regions.values()}
        extracted = "extract" in self.stage_seconds  # the run got as far as extracting
        published = {
            "extract": extracted,
            "transform": extracted and bool(statuses - {"pending", "extract_failed"}),
            "quality": self.gate_verdict != "not_run",
            "load": "stage" in self.stage_seconds,  # the load subflow ran to its end
            "alert": alerted,
        }
        return [
            (f"{self.artifact_prefix}{prefix}-{day}", where)
            for label, (prefix, where) in DETAIL_ARTIFACTS.items()
            if published[label]
        ]

    def headline(self) -> str:
        """``retail-sales-etl 2024-01-15: FAILED, 3/4 region(s) loaded`` (artifact titles)."""
        ok, _ = self.outcome()
        loaded = sum(o.status == "loaded" for o in self.regions.values())
        return (
            f"retail-sales-etl {self.run_date.isoformat()}: {'OK' if ok else 'FAILED'}, "
            f"{loaded}/{len(self.regions)} region(s) loaded"
        )

    def to_markdown(self, *, alerted: bool, state_message: str | None = None) -> str:
        """The parent run's summary artifact: outcome, one row per region (failures first),
        where the detail artifacts are, what took how long."""
        _, message = self.outcome()
        lines = [
            f"## {self.headline()}",
            "",
            _md(state_message or message),
            "",
            "| region | status | " + " | ".join(SUMMARY_COUNTS) + " |",
            "| --- | --- |" + " ---: |" * len(SUMMARY_COUNTS),
        ]
        for o in self.ordered_regions():
            counts = " | ".join(humanize.count(getattr(o, a)) for a in SUMMARY_COUNTS.values())
            lines.append(f"| {o.region} | {o.status} | {counts} |")
        total = " | ".join(
            humanize.count(sum(getattr(o, a) for o in self.regions.values()))
            for a in SUMMARY_COUNTS.values()
        )
        lines.append(f"| **all** | | {total} |")
        errors = [o for o in self.ordered_regions() if o.error]
        if errors:
            lines += ["", "**Errors:**", ""]
            lines += [f"- {o.region} ({o.status}): {_md(o.error or '')}" for o in errors]
        if self.failing_checks:
            lines += ["", "Failing checks: " + _md(", ".join(self.failing_checks))]
        if self.verification_failures:
            lines += ["", "Verification: " + _md("; ".join(self.verification_failures))]
        lines += [
            "",
            f"Batch `{self.batch_id}`"
            + (f", warehouse {_md(self.warehouse)}" if self.warehouse else "")
            + ".",
        ]
        lines += ["", "**Details** (artifact keys, also under Artifacts in the UI):", ""]
        lines += [
            f"- `{key}` ({where})" for key, where in self.detail_artifact_keys(alerted=alerted)
        ]
        timings = timing_lines(self.stage_seconds)
        if timings:
            lines += ["", "**Time** (wall clock):", ""] + [f"- {_md(line)}" for line in timings]
        if self.schema_warnings:
            lines += ["", "**Source schema changes:**", ""]
            lines += [f"- {_md(w)}" for w in self.schema_warnings]
        return "\n".join(lines) + "\n"


def timing_lines(stage_seconds: Mapping[str, float]) -> list[str]:
    """What took how long, saying what contains what: the load holds stage, merge, verify."""
    s = stage_seconds
    lines = []
    if "extract" in s:
        lines.append(f"extract {humanize.seconds(s['extract'])}: every region at once")
    if "transform" in s:
        lines.append(
            f"transform {humanize.seconds(s['transform'])}: after the last extract landed "
            "(earlier regions were transformed during the extract)"
        )
    if "validate" in s:
        lines.append(f"quality gate {humanize.seconds(s['validate'])}")
    if "load" in s:
        parts = [
            f"{label} {humanize.seconds(s[key])}"
            for key, label in (("stage", "stage"), ("merge", "copy + merge"), ("verify", "verify"))
            if key in s
        ]
        lines.append(
            f"load {humanize.seconds(s['load'])}"
            + (" = " + " + ".join(parts) if parts else "")
            + (" (+ subflow overhead)" if parts else "")
        )
    return lines


#: Distinct region errors quoted in the state message; the other regions are named only
#: (at 50 regions, 50 quoted errors made the message unreadable; the artifacts have them all).
STATE_ERRORS_SHOWN = 5


def _by_error(outcomes: Sequence[RegionRecord]) -> str:
    """``us_east, europe (error); apac (other error)``: regions sharing an error named once;
    past :data:`STATE_ERRORS_SHOWN` errors, the remaining regions are listed by name."""
    groups: dict[str, list[str]] = {}
    for o in outcomes:
        groups.setdefault(_short(o.error), []).append(o.region)
    items = list(groups.items())
    text = "; ".join(
        f"{', '.join(regions)} ({error})" for error, regions in items[:STATE_ERRORS_SHOWN]
    )
    rest = [r for _, regions in items[STATE_ERRORS_SHOWN:] for r in regions]
    if rest:
        text += f"; and {len(rest)} more region(s): {', '.join(rest)}"
    return text


def _short(text: str | None, limit: int = STATE_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters; a longer text keeps its start (what failed)
    and its end (the cause, which errors name last) around an ellipsis."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    return text[:head] + " … " + text[len(text) - (limit - head - 3) :]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _describe_check(check: Any) -> str:
    threshold = "" if check.threshold is None else f" vs threshold {check.threshold_text}"
    where = "batch" if check.region == "*" else check.region
    return f"{where}/{check.name} = {check.measured_text}{threshold}"
