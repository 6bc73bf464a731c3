"""The quality gate: checks on a transformed batch and a pass/fail verdict.

Plain functions, no Prefect. Every check yields a :class:`CheckResult` with a stable name (used
in alerts and in ``dq_results``), the region (``'*'`` for the batch), the measured value, the
threshold and a status. ``warn`` never fails the batch; ``skipped`` says why in ``detail``.

Checks (thresholds from :class:`retail_etl.settings.Settings`, defaults in brackets):

- ``min_rows_region`` / ``min_rows_batch``: accepted rows of a region / of the batch below
  ``min_rows_per_region`` [100] / ``min_rows_per_batch`` [100] fail.
- ``null_share_<column>`` (each critical column, per region): NULL share in the raw extract
  above ``max_null_share`` [5 %] fails.
- ``reject_rate`` (per region): rejected / extracted above ``max_reject_rate`` [5 %] fails.
- ``history_volume`` (per region): deviation of accepted rows from the region's recent normal
  above ``history_warn_deviation`` [30 %] warns, above ``history_fail_deviation`` [50 %] fails
  (only warns if ``history_fail_mode`` [fail] is ``warn``); skipped with fewer than
  ``history_min_points`` [3] points in ``history_days`` [28]. See :func:`history_check`.
- ``missing_from_source_share`` (per region): the share of the keys ``sales_fact`` already
  holds for the region's day that the source no longer returns, ``(stored - source keys) /
  stored``; above ``max_missing_share`` [20 %] fails, so a truncated or wrong source stops the
  region instead of mass-deleting its day as ``missing_from_source``. Skipped when nothing is
  stored for the day yet. See :func:`missing_from_source_check`.
- ``no_duplicate_keys``, ``no_rule_violations``, ``sale_date_is_business_date`` (per region,
  on the accepted parquet as written): any offending row fails. Violations are a NULL critical
  column, a :data:`~retail_etl.rules.REJECT_RULES` rule (sale date apart), derived metrics that
  do not match, or a row of another region. The transform measures them when it reads its
  accepted files back (:func:`retail_etl.rules.measure_accepted`,
  ``RegionTransformResult.accepted_measures``); the gate reads no file.
- Ratio checks with no extracted rows are skipped (``min_rows_region`` fails instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date, timedelta
from statistics import fmean
from typing import Any, Literal

from retail_etl import contract
from retail_etl.charts import volume_chart_markdown
from retail_etl.records import CheckResult, CheckStatus, format_measure
from retail_etl.rules import AcceptedMeasures
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult

__all__ = [
    "CheckResult",
    "QualityReport",
    "QualityThresholds",
    "evaluate_batch",
    "format_measure",
    "history_check",
    "invariant_checks",
    "missing_from_source_check",
]


_STATUS_ORDER: dict[str, int] = {"fail": 0, "warn": 1, "skipped": 2, "pass": 3}


@dataclass(frozen=True)
class QualityThresholds:
    """Thresholds of the gate; field names and defaults match :class:`Settings`."""

    min_rows_per_region: int = 100
    min_rows_per_batch: int = 100
    max_null_share: float = 0.05
    max_reject_rate: float = 0.05
    history_days: int = 28
    history_min_points: int = 3
    history_warn_deviation: float = 0.3
    history_fail_deviation: float = 0.5
    history_fail_mode: Literal["fail", "warn"] = "fail"
    max_missing_share: float = 0.2

    def __post_init__(self) -> None:
        if self.history_fail_mode not in ("fail", "warn"):
            raise ValueError(
                f"history_fail_mode must be 'fail' or 'warn', not {self.history_fail_mode!r}"
            )
        if self.history_warn_deviation > self.history_fail_deviation:
            raise ValueError(
                f"history_warn_deviation ({self.history_warn_deviation}) must not exceed "
                f"history_fail_deviation ({self.history_fail_deviation})"
            )
        if self.history_days <= 0 or self.history_min_points <= 0:
            raise ValueError("history_days and history_min_points must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityThresholds:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


#: Columns of the report's region x check matrix: label -> check names (a group shows its
#: worst status).
_MATRIX_COLUMNS: dict[str, tuple[str, ...]] = {
    "min rows": ("min_rows_region",),
    "NULL shares": tuple(f"null_share_{c}" for c in contract.CRITICAL_COLUMNS),
    "reject rate": ("reject_rate",),
    "history volume": ("history_volume",),
    "invariants": ("no_duplicate_keys", "no_rule_violations", "sale_date_is_business_date"),
}
_CELL_MARK = {"pass": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skipped"}


@dataclass
class QualityReport:
    business_date: date
    batch_id: str
    checks: list[CheckResult]
    #: markdown of the volume chart (``retail_etl.charts``), shown after the matrix
    volume_chart: str = ""

    @property
    def verdict(self) -> Literal["pass", "fail"]:
        """``fail`` if any check failed; warnings and skipped checks do not fail."""
        return "fail" if self.failing else "pass"

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "warn"]

    def sorted_checks(self) -> list[CheckResult]:
        """Failing first, then warnings, skipped, passing; stable within a status."""
        return sorted(self.checks, key=lambda c: _STATUS_ORDER[c.status])

    def to_markdown(self) -> str:
        """What a person reads at a glance: the verdict, then every failing and warning check
        with its value vs threshold, then a region x check matrix; passes are one line."""
        counts = {s: sum(c.status == s for c in self.checks) for s in _STATUS_ORDER}
        lines = [
            f"## Quality gate: {self.verdict.upper()}",
            "",
            f"Business date {self.business_date.isoformat()}, batch `{self.batch_id}`: "
            f"{counts['fail']} failing, {counts['warn']} warning, {counts['pass']} passed, "
            f"{counts['skipped']} skipped of {len(self.checks)} checks.",
            "",
        ]
        for title, status in (("Failing checks", "fail"), ("Warnings", "warn")):
            chosen = [c for c in self.checks if c.status == status]
            if not chosen:
                continue
            # a list, not a table: the details wrap instead of running off the screen
            lines += [f"### {title}", ""]
            lines += [
                f"- **{c.name}** ({_where(c.region)}): {c.measured_text} vs threshold "
                f"{c.threshold_text}: {_md_escape(c.detail)}"
                for c in chosen
            ]
            lines.append("")
        lines += self._matrix_lines()
        if self.volume_chart:
            lines += ["", "### Accepted rows vs history", "", self.volume_chart]
        skipped = [c for c in self.checks if c.status == "skipped"]
        if skipped:
            # the same reason for several regions is one line
            reasons: dict[tuple[str, str], list[str]] = {}
            for c in skipped:
                reasons.setdefault((c.name, c.detail), []).append(_where(c.region))
            lines += ["", "Skipped:"]
            lines += [
                f"- {name} ({', '.join(regions)}): {_md_escape(detail)}"
                for (name, detail), regions in reasons.items()
            ]
        lines += [
            "",
            f"Passed: {counts['pass']} of {len(self.checks)} checks (shown as `ok` above; every "
            "check's value is in `dq_results`).",
        ]
        return "\n".join(lines) + "\n"

    def _matrix_lines(self) -> list[str]:
        by_key = {(c.region, c.name): c for c in self.checks}
        regions = [
            r for r in dict.fromkeys(c.region for c in self.checks) if r != contract.BATCH_REGION
        ]
        lines = [
            "### By region",
            "",
            "| region | " + " | ".join(_MATRIX_COLUMNS) + " |",
            "| --- |" + " --- |" * len(_MATRIX_COLUMNS),
        ]
        for region in regions:
            cells = []
            for names in _MATRIX_COLUMNS.values():
                found = [by_key[(region, n)] for n in names if (region, n) in by_key]
                cells.append(_matrix_cell(found))
            lines.append(f"| {region} | " + " | ".join(cells) + " |")
        batch = [c for c in self.checks if c.region == contract.BATCH_REGION]
        lines += [
            f"| batch | {_matrix_cell([c])} (`{c.name}`) |" + " |" * (len(_MATRIX_COLUMNS) - 1)
            for c in batch
        ]
        return lines

    def to_records(self, flow_run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows for ``dq_results``."""
        return [c.dq_record(self.batch_id, self.business_date, flow_run_id) for c in self.checks]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _where(region: str) -> str:
    return "batch" if region == contract.BATCH_REGION else region


def _matrix_cell(checks: Sequence[CheckResult]) -> str:
    """The worst status of ``checks``; a single check also shows its value."""
    if not checks:
        return "-"
    worst = min(checks, key=lambda c: _STATUS_ORDER[c.status])
    mark = _CELL_MARK[worst.status]
    if len(checks) == 1:
        return mark if worst.status == "skipped" else f"{mark} {worst.measured_text}"
    if worst.status == "pass":
        return mark
    bad = sum(c.status == worst.status for c in checks)
    return f"{mark} ({bad} of {len(checks)})"


# --- per-region checks from the transform statistics --------------------------------------------


def _min_rows(
    name: str,
    region: str,
    rows: int,
    minimum: int,
    *,
    extracted: int | None = None,
    business_date: date | None = None,
) -> CheckResult:
    """``extracted`` 0 (an empty source day) is named as such rather than as "too few rows"."""
    ok = rows >= minimum
    if not ok and extracted == 0 and business_date is not None:
        detail = (
            f"the source holds 0 rows for {business_date.isoformat()} in {region} "
            f"(completed, not deleted); the minimum is {minimum:,}"
        )
    else:
        detail = f"{rows:,} accepted rows" + ("" if ok else f", fewer than the minimum {minimum:,}")
    return CheckResult(name, region, float(rows), float(minimum), "pass" if ok else "fail", detail)


def _null_share_checks(result: RegionTransformResult, limit: float) -> list[CheckResult]:
    out = []
    for column in contract.CRITICAL_COLUMNS:
        name = f"null_share_{column}"
        nulls = result.null_counts.get(column, 0)
        if result.rows_extracted == 0:
            out.append(CheckResult(name, result.region, 0.0, limit, "skipped", "no rows extracted"))
            continue
        share = nulls / result.rows_extracted
        status: CheckStatus = "fail" if share > limit else "pass"
        out.append(
            CheckResult(
                name,
                result.region,
                share,
                limit,
                status,
                f"{nulls:,} of {result.rows_extracted:,} extracted rows have NULL {column}",
            )
        )
    return out


def _reject_rate(result: RegionTransformResult, limit: float) -> CheckResult:
    if result.rows_extracted == 0:
        return CheckResult("reject_rate", result.region, 0.0, limit, "skipped", "no rows extracted")
    rate = result.reject_rate
    top = sorted(result.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    why = ", ".join(f"{r}: {n:,}" for r, n in top) or "none"
    return CheckResult(
        "reject_rate",
        result.region,
        rate,
        limit,
        "fail" if rate > limit else "pass",
        f"{result.rows_rejected:,} of {result.rows_extracted:,} rows rejected (top reasons: {why})",
    )


def missing_from_source_check(
    result: RegionTransformResult, stored_keys: int | None, limit: float
) -> CheckResult:
    """``stored_keys``: rows ``sales_fact`` holds for the region's day (``None``: unknown)."""
    name = "missing_from_source_share"
    if not stored_keys:
        return CheckResult(
            name, result.region, 0.0, limit, "skipped", "sales_fact holds no row of the day yet"
        )
    missing = max(0, stored_keys - result.source_keys)
    share = missing / stored_keys
    failed = share > limit
    return CheckResult(
        name,
        result.region,
        share,
        limit,
        "fail" if failed else "pass",
        f"the source returns {result.source_keys:,} keys for the day, sales_fact holds "
        f"{stored_keys:,}: {missing:,} fewer"
        + (
            f"; more than {limit:.0%} of the day would be retracted as missing_from_source, so "
            "the region is stopped (RETAIL_ETL_MAX_MISSING_SHARE allows more)"
            if failed
            else ""
        ),
    )


def history_baseline(
    history: Sequence[tuple[date, int]], business_date: date, thresholds: QualityThresholds
) -> tuple[float, str] | None:
    """(baseline, how it was computed) of :func:`history_check`, or None without enough
    points: the mean of the same-weekday points within ``history_days`` before the date if
    there are ``history_min_points`` of them, else the mean of all points in the window."""
    start = business_date - timedelta(days=thresholds.history_days)
    points = [(d, int(n)) for d, n in history if start <= d < business_date]
    same_day = [n for d, n in points if d.weekday() == business_date.weekday()]
    if len(same_day) >= thresholds.history_min_points:
        return fmean(same_day), f"mean of {len(same_day)} same-weekday points"
    if len(points) >= thresholds.history_min_points:
        return fmean(n for _, n in points), f"trailing mean of {len(points)} points"
    return None


def history_baselines(
    history: Mapping[str, Sequence[tuple[date, int]]],
    business_date: date,
    thresholds: QualityThresholds,
) -> dict[str, float]:
    """Each region's :func:`history_baseline`, for the regions that have one (the chart)."""
    found = {
        r: history_baseline(points, business_date, thresholds) for r, points in history.items()
    }
    return {region: baseline[0] for region, baseline in found.items() if baseline is not None}


def history_check(
    region: str,
    accepted_rows: int,
    history: Sequence[tuple[date, int]],
    business_date: date,
    thresholds: QualityThresholds,
) -> CheckResult:
    """Compare a region's accepted rows with its recent normal.

    Points are the region's earlier ``(business_date, accepted_rows)`` within ``history_days``
    before ``business_date`` (the date itself and later dates are ignored, so a re-run does not
    compare against itself). The baseline is the mean of the same-weekday points when there are
    at least ``history_min_points`` of them, else the mean of all points; with fewer points the
    check is skipped. ``deviation = |x - baseline| / baseline``: above ``history_warn_deviation``
    warns, above ``history_fail_deviation`` fails (warns if ``history_fail_mode='warn'``).
    """
    name = "history_volume"
    found = history_baseline(history, business_date, thresholds)
    if found is None:
        start = business_date - timedelta(days=thresholds.history_days)
        points = [d for d, _ in history if start <= d < business_date]
        return CheckResult(
            name,
            region,
            float(accepted_rows),
            None,
            "skipped",
            f"no history yet ({len(points)} points < {thresholds.history_min_points}) "
            f"in the last {thresholds.history_days} days",
        )
    baseline, method = found
    if baseline <= 0:
        return CheckResult(
            name,
            region,
            float(accepted_rows),
            None,
            "skipped",
            f"baseline is 0 ({method}): relative deviation undefined",
        )
    deviation = abs(accepted_rows - baseline) / baseline
    status: CheckStatus = "pass"
    threshold = thresholds.history_fail_deviation
    if deviation > thresholds.history_fail_deviation:
        status = "fail" if thresholds.history_fail_mode == "fail" else "warn"
    elif deviation > thresholds.history_warn_deviation:
        status, threshold = "warn", thresholds.history_warn_deviation
    direction = "below" if accepted_rows < baseline else "above"
    return CheckResult(
        name,
        region,
        deviation,
        threshold,
        status,
        f"{accepted_rows:,} accepted rows, {deviation:.1%} {direction} baseline {baseline:,.0f} "
        f"({method}); warn > {thresholds.history_warn_deviation:.0%}, "
        f"{thresholds.history_fail_mode} > {thresholds.history_fail_deviation:.0%}",
    )


# --- invariants on the accepted parquet ---------------------------------------------------------


def invariant_checks(
    measures_by_region: Mapping[str, AcceptedMeasures | None],
    business_date: date,
) -> list[CheckResult]:
    """Judge the invariants the transform measured on each region's accepted parquet:
    duplicates, rule violations, foreign sale dates.

    Each measured value is a row count that must be 0; ``no_rule_violations`` counts rows that
    break at least one term (detail: count per term). Reads no file. A region without
    measures fails all three (nothing vouches for its files).
    """
    out: list[CheckResult] = []
    for region, m in measures_by_region.items():
        if m is None:
            out += [
                CheckResult(name, region, 1.0, 0.0, "fail", "the accepted files were not measured")
                for name in (
                    "no_duplicate_keys",
                    "no_rule_violations",
                    "sale_date_is_business_date",
                )
            ]
            continue
        out.append(
            _zero_check(
                "no_duplicate_keys",
                region,
                m.duplicate_keys,
                f"{m.duplicate_keys:,} accepted rows repeat a (region, sale_id) among {m.rows:,}",
            )
        )
        out.append(
            _zero_check(
                "no_rule_violations",
                region,
                m.violating_rows,
                ", ".join(f"{n}: {c:,}" for n, c in sorted(m.violations.items()))
                or f"none among {m.rows:,} accepted rows",
            )
        )
        out.append(
            _zero_check(
                "sale_date_is_business_date",
                region,
                m.foreign_sale_dates,
                f"{m.foreign_sale_dates:,} of {m.rows:,} accepted rows have a sale_date other "
                f"than {business_date.isoformat()}",
            )
        )
    return out


def _zero_check(name: str, region: str, count: int, detail: str) -> CheckResult:
    return CheckResult(name, region, float(count), 0.0, "pass" if count == 0 else "fail", detail)


# --- the batch ----------------------------------------------------------------------------------


def evaluate_batch(
    results: Mapping[str, RegionTransformResult],
    *,
    business_date: date,
    batch_id: str,
    thresholds: QualityThresholds,
    history: Mapping[str, Sequence[tuple[date, int]]],
    stored_keys: Mapping[str, int] | None = None,
) -> QualityReport:
    """All checks of a batch: per region (min rows, NULL shares, reject rate, history volume,
    missing-from-source share, invariants of the accepted parquet as the transform measured
    them) and for the batch (min rows); reads no file. ``stored_keys``: rows ``sales_fact`` holds per region for the day."""
    checks: list[CheckResult] = []
    for region, result in results.items():
        checks.append(
            _min_rows(
                "min_rows_region",
                region,
                result.rows_accepted,
                thresholds.min_rows_per_region,
                extracted=result.rows_extracted,
                business_date=business_date,
            )
        )
        checks.extend(_null_share_checks(result, thresholds.max_null_share))
        checks.append(_reject_rate(result, thresholds.max_reject_rate))
        checks.append(
            history_check(
                region, result.rows_accepted, history.get(region, ()), business_date, thresholds
            )
        )
        checks.append(
            missing_from_source_check(
                result, (stored_keys or {}).get(region), thresholds.max_missing_share
            )
        )
    total = sum(r.rows_accepted for r in results.values())
    empty = [region for region, r in results.items() if r.rows_extracted == 0]
    batch = _min_rows("min_rows_batch", contract.BATCH_REGION, total, thresholds.min_rows_per_batch)
    if batch.status == "fail" and empty and len(empty) == len(results):
        batch = replace(
            batch,
            detail=f"the source holds 0 rows for {business_date.isoformat()} in every region "
            f"({', '.join(empty)}); the minimum is {thresholds.min_rows_per_batch:,}",
        )
    checks.append(batch)
    checks.extend(
        invariant_checks(
            {region: r.accepted_measures for region, r in results.items()}, business_date
        )
    )
    chart = volume_chart_markdown(
        history,
        {r: res.rows_accepted for r, res in results.items()},
        business_date,
        thresholds,
        history_baselines(history, business_date, thresholds),
    )
    return QualityReport(
        business_date=business_date, batch_id=batch_id, checks=checks, volume_chart=chart
    )
