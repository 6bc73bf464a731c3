"""The weekly data quality report (``retail-sales-quality-report``, ``retail-etl report``).

Plain code in three steps: :func:`collect_report` reads the warehouse tables for a range of
business dates through a read-only ``query(sql, params)`` callable (``Warehouse.query``) with
bound parameters, in SQL that runs on DuckDB and Snowflake alike; :func:`render_markdown`,
:func:`summary_message` and :func:`volume_chart` are pure functions of the collected
:class:`QualityReport`.
"""
# ruff: noqa: S608 - SQL text is built from validated, quoted identifiers only; every value is
# a bound parameter.

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from retail_etl import humanize
from retail_etl.alerts import AlertMessage
from retail_etl.backfill import date_range
from retail_etl.charts import daily_volume_svg
from retail_etl.closing import business_date_for
from retail_etl.run import batch_run_date
from retail_etl.settings import Settings
from retail_etl.warehouse import sql_renderer
from retail_etl.warehouse.base import (
    DQ_RESULTS,
    LEDGER,
    SALES_FACT,
    SALES_REJECTS,
    SALES_RETRACTIONS,
    SCHEMA_HISTORY,
)
from retail_etl.warehouse.dialect import SqlDialect

#: A read-only query with bound parameters (``Warehouse.query``).
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

REPORT_DAYS = 7
#: Reject reasons listed in the report and the Slack summary.
TOP_REASONS = 10
LEDGER_COUNTS: tuple[str, ...] = (
    "rows_extracted",
    "rows_accepted",
    "rows_rejected",
    "rows_retracted",
    "rows_inserted",
    "rows_updated",
    "rows_deleted",
)


def default_window(scheduled_start: datetime, timezone: str) -> tuple[date, date]:
    """The 7 business days before the run's scheduled start, in ``timezone``: a Monday run
    reports Monday to Sunday of the week before."""
    end = business_date_for(scheduled_start, timezone)
    return end - timedelta(days=REPORT_DAYS - 1), end


def report_key(start: date, end: date) -> str:
    """The report's artifact key (``quality-report-2024-01-15-2024-01-21``), before the
    environment's prefix."""
    return f"quality-report-{start.isoformat()}-{end.isoformat()}"


def collect_configured_report(
    query: Query, settings: Settings, start: date, end: date, regions: Sequence[str] | None = None
) -> QualityReport:
    """:func:`collect_report` with the configured warehouse dialect, regions, business timezone
    and history thresholds. Table names are unqualified: the warehouse's connection has its
    schema as the current one (DuckDB: its file; Snowflake: the connector block's schema)."""
    unknown = sorted(set(regions or ()) - set(settings.regions))
    if unknown:
        raise ValueError(
            f"unknown region(s) {', '.join(unknown)}; configured regions are "
            f"{', '.join(settings.regions)} (RETAIL_ETL_REGIONS)"
        )
    return collect_report(
        query,
        sql_renderer(settings.warehouse),
        start,
        end,
        list(regions or settings.regions),
        timezone=settings.timezone,
        history_days=settings.history_days,
        history_min_points=settings.history_min_points,
        volume_warn_deviation=settings.history_warn_deviation,
    )


# --------------------------------------------------------------------------- collected data


@dataclass(frozen=True)
class RegionDay:
    """One (region, business date): the latest ledger row and what the tables hold for it."""

    region: str
    business_date: date
    status: str | None  # latest ledger row's status; None: never run
    counts: dict[str, int | None]  # LEDGER_COUNTS of that row
    ever_loaded: bool  # some ledger row of the pair is 'loaded'
    fact_rows: int  # sales_fact rows with this sale_date
    rejects: int  # sales_rejects rows with this sale_date
    retractions: int  # sales_retractions rows with this sale_date (removed from sales_fact)
    median_accepted: float | None  # trailing median of the region's earlier loaded days
    history_points: int  # loaded days the median is taken over

    @property
    def accepted(self) -> int | None:
        return self.counts.get("rows_accepted") if self.status == "loaded" else None

    @property
    def deviation(self) -> float | None:
        """(accepted - median) / median of a loaded day with a median."""
        if self.accepted is None or not self.median_accepted:
            return None
        return (self.accepted - self.median_accepted) / self.median_accepted


@dataclass(frozen=True)
class ReasonTrend:
    reason: str
    this_period: int
    previous_period: int

    @property
    def change(self) -> int:
        return self.this_period - self.previous_period


@dataclass(frozen=True)
class GateIssue:
    business_date: date
    region: str
    check_name: str
    status: str  # warn | fail
    measured: float | None
    threshold: float | None
    detail: str
    batch_id: str


@dataclass(frozen=True)
class SchemaChange:
    region: str
    first_seen_at: datetime
    differences: str
    batch_id: str


@dataclass(frozen=True)
class QualityReport:
    start: date
    end: date
    regions: list[str]
    days: list[RegionDay]  # date, then region order
    reasons: list[ReasonTrend]  # most frequent this period first
    gate_issues: list[GateIssue]
    schema_changes: list[SchemaChange]
    volume_warn_deviation: float = 0.3
    history_days: int = 28

    @property
    def missing(self) -> list[RegionDay]:
        """Pairs without any 'loaded' ledger row."""
        return [d for d in self.days if not d.ever_loaded]

    @property
    def volume_outliers(self) -> list[RegionDay]:
        return [
            d
            for d in self.days
            if d.deviation is not None and abs(d.deviation) > self.volume_warn_deviation
        ]

    def total(self, count: str) -> int:
        return sum(d.counts.get(count) or 0 for d in self.days if d.status == "loaded")

    def accepted_series(self) -> dict[str, list[tuple[date, int]]]:
        """region -> (date, accepted rows) of its loaded days in the range."""
        series: dict[str, list[tuple[date, int]]] = {r: [] for r in self.regions}
        for d in self.days:
            if d.accepted is not None:
                series[d.region].append((d.business_date, d.accepted))
        return series

    def medians(self) -> dict[str, list[tuple[date, float]]]:
        out: dict[str, list[tuple[date, float]]] = {r: [] for r in self.regions}
        for d in self.days:
            if d.median_accepted is not None:
                out[d.region].append((d.business_date, d.median_accepted))
        return out


# --------------------------------------------------------------------------- SQL


def latest_ledger_sql(t: SqlDialect) -> str:
    """Params: (from, to) -> (region, business_date, status, *LEDGER_COUNTS) of the latest
    ledger row of every pair (the same order as the warehouse's own ledger reads)."""
    order = f"{t.ident('finished_at')} DESC NULLS LAST, {t.ident('started_at')} DESC NULLS LAST"
    return (
        f"SELECT {t.cols(['region', 'business_date', 'status', *LEDGER_COUNTS])} "
        f"FROM {t.table(LEDGER)} WHERE {t.ident('business_date')} BETWEEN {t.param} AND {t.param} "
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {t.cols(['region', 'business_date'])} "
        f"ORDER BY {order}) = 1"
    )


def latest_loaded_sql(t: SqlDialect) -> str:
    """Params: (from, to, 'loaded') -> (region, business_date, rows_accepted) of the latest
    'loaded' row of every pair: the history the volume is compared with."""
    order = f"{t.ident('finished_at')} DESC NULLS LAST, {t.ident('started_at')} DESC NULLS LAST"
    return (
        f"SELECT {t.cols(['region', 'business_date', 'rows_accepted'])} FROM {t.table(LEDGER)} "
        f"WHERE {t.ident('business_date')} BETWEEN {t.param} AND {t.param} "
        f"AND {t.ident('status')} = {t.param} "
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {t.cols(['region', 'business_date'])} "
        f"ORDER BY {order}) = 1"
    )


def day_counts_sql(t: SqlDialect, table: str, label: str | None = None) -> str:
    """Params: (from, to) -> (region, sale_date[, label], rows) of ``table``."""
    keys = ["region", "sale_date", *([label] if label else [])]
    return (
        f"SELECT {t.cols(keys)}, COUNT(*) FROM {t.table(table)} "
        f"WHERE {t.ident('sale_date')} BETWEEN {t.param} AND {t.param} GROUP BY {t.cols(keys)}"
    )


def gate_issues_sql(t: SqlDialect) -> str:
    """Params: (from, to, 'warn', 'fail') -> the warned and failed checks of the range."""
    cols = [
        "business_date",
        "region",
        "check_name",
        "status",
        "measured",
        "threshold",
        "detail",
        "batch_id",
    ]
    return (
        f"SELECT {t.cols(cols)} FROM {t.table(DQ_RESULTS)} "
        f"WHERE {t.ident('business_date')} BETWEEN {t.param} AND {t.param} "
        f"AND {t.ident('status')} IN ({t.params(2)}) "
        f"ORDER BY {t.cols(['business_date', 'region', 'check_name', 'batch_id'])}"
    )


def schema_history_sql(t: SqlDialect) -> str:
    """No params: every schema change (one row per change: a small table; the range is applied
    in Python, on the run date of the batch that first saw the change)."""
    cols = ["region", "first_seen_at", "differences", "first_seen_batch_id"]
    return f"SELECT {t.cols(cols)} FROM {t.table(SCHEMA_HISTORY)}"


# --------------------------------------------------------------------------- collect


def collect_report(
    query: Query,
    target: SqlDialect,
    start: date,
    end: date,
    regions: Sequence[str],
    *,
    timezone: str = "UTC",
    history_days: int = 28,
    history_min_points: int = 3,
    volume_warn_deviation: float = 0.3,
) -> QualityReport:
    """Read the report of [start, end] (business dates) for ``regions``. Reject reasons are
    compared with the same number of days before ``start``; volumes with the trailing median of
    the region's loaded days in the ``history_days`` before each day (with at least
    ``history_min_points`` of them)."""
    days = date_range(start, end)  # refuses an inverted range
    span = timedelta(days=len(days))
    previous_start = start - span
    history_start = start - timedelta(days=history_days)

    latest = {
        (r[0], _as_date(r[1])): (r[2], dict(zip(LEDGER_COUNTS, map(_int, r[3:]), strict=True)))
        for r in query(latest_ledger_sql(target), [start, end])
    }
    loaded: dict[str, dict[date, int]] = {}
    for region, day, accepted in query(latest_loaded_sql(target), [history_start, end, "loaded"]):
        loaded.setdefault(region, {})[_as_date(day)] = _int(accepted) or 0
    fact = _day_counts(query(day_counts_sql(target, SALES_FACT), [start, end]))
    retracted = _day_counts(query(day_counts_sql(target, SALES_RETRACTIONS), [start, end]))
    reject_rows = query(day_counts_sql(target, SALES_REJECTS, "reasons"), [previous_start, end])

    rejects: Counter[tuple[str, date]] = Counter()
    this_period: Counter[str] = Counter()
    previous_period: Counter[str] = Counter()
    for region, sale_date, reasons, rows in reject_rows:
        day, n = _as_date(sale_date), int(rows)
        period = this_period if day >= start else previous_period
        if day >= start:
            rejects[(region, day)] += n
        # A reject carries every reason that applies, joined by ';': each counts.
        for reason in str(reasons or "unknown").split(";"):
            period[reason] += n

    out = []
    for day in days:
        for region in regions:
            status, counts = latest.get((region, day), (None, {c: None for c in LEDGER_COUNTS}))
            history = loaded.get(region, {})
            window_start = day - timedelta(days=history_days)
            earlier = [n for d, n in history.items() if window_start <= d < day]
            out.append(
                RegionDay(
                    region=region,
                    business_date=day,
                    status=status,
                    counts=counts,
                    ever_loaded=day in history,
                    fact_rows=fact.get((region, day), 0),
                    rejects=rejects.get((region, day), 0),
                    retractions=retracted.get((region, day), 0),
                    median_accepted=(
                        float(statistics.median(earlier))
                        if len(earlier) >= history_min_points
                        else None
                    ),
                    history_points=len(earlier),
                )
            )
    reasons = sorted(
        (ReasonTrend(r, this_period[r], previous_period[r]) for r in this_period | previous_period),
        key=lambda t: (-t.this_period, -t.previous_period, t.reason),
    )
    zone = ZoneInfo(timezone)
    changes = [
        SchemaChange(str(r[0]), _aware(r[1]), str(r[2] or ""), str(r[3] or ""))
        for r in query(schema_history_sql(target), [])
    ]
    # A change belongs to the business date of the batch that first saw it (its run date),
    # like every other line of the report; an id without a date falls back to when it was seen.
    changes = sorted(
        (
            c
            for c in changes
            if start
            <= (batch_run_date(c.batch_id) or c.first_seen_at.astimezone(zone).date())
            <= end
        ),
        key=lambda c: (c.first_seen_at, c.region),
    )
    issues = [
        GateIssue(
            business_date=_as_date(r[0]),
            region=str(r[1]),
            check_name=str(r[2]),
            status=str(r[3]),
            measured=None if r[4] is None else float(r[4]),
            threshold=None if r[5] is None else float(r[5]),
            detail=str(r[6] or ""),
            batch_id=str(r[7]),
        )
        for r in query(gate_issues_sql(target), [start, end, "warn", "fail"])
    ]
    return QualityReport(
        start=start,
        end=end,
        regions=list(regions),
        days=out,
        reasons=reasons,
        gate_issues=issues,
        schema_changes=changes,
        volume_warn_deviation=volume_warn_deviation,
        history_days=history_days,
    )


def _day_counts(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, date], int]:
    return {(str(r[0]), _as_date(r[1])): int(r[2]) for r in rows}


def _as_date(value: Any) -> date:
    """DuckDB returns ``date``; Snowflake may return ``datetime`` or ISO text."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _aware(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# --------------------------------------------------------------------------- render


def render_markdown(report: QualityReport, *, chart: str | None = None) -> str:
    """The report as markdown. ``chart`` is the image reference of the volume chart (a file
    name next to the report, or a ``data:`` URL); None leaves the chart out."""
    r = report
    loaded = sum(1 for d in r.days if d.status == "loaded")
    fails = [i for i in r.gate_issues if i.status == "fail"]
    warns = [i for i in r.gate_issues if i.status == "warn"]
    lines = [
        f"# Data quality report {r.start.isoformat()} to {r.end.isoformat()}",
        "",
        f"Regions: {', '.join(r.regions)}. Region-days loaded: {loaded} of {len(r.days)}; "
        f"missing: {len(r.missing)}. Accepted rows {humanize.count(r.total('rows_accepted'))}, "
        f"rejected {humanize.count(r.total('rows_rejected'))}, retracted "
        f"{humanize.count(r.total('rows_retracted'))}. Gate failures {len(fails)}, warnings "
        f"{len(warns)}; schema changes {len(r.schema_changes)}; volume outliers "
        f"{len(r.volume_outliers)}.",
        "",
        "## Days still missing",
        "",
    ]
    if r.missing:
        lines += ["| date | region | latest status |", "|---|---|---|"]
        lines += [
            f"| {d.business_date} | {d.region} | {d.status or 'never run'} |" for d in r.missing
        ]
    else:
        lines.append("None: every region-day has a `loaded` ledger row.")
    lines += [
        "",
        "## Per region and day",
        "",
        "Latest ledger row (status, counts of that run); fact, rejects and retractions as the "
        f"tables hold them now; accepted vs the trailing median of the earlier loaded days in "
        f"{r.history_days} days.",
        "",
        "| date | region | status | extracted | accepted | rejected | retracted | inserted "
        "| updated | deleted | fact rows | rejects | retractions | median | vs median |",
        "|---|---|---|" + "---:|" * 12,
    ]
    for d in r.days:
        cells = [humanize.count(d.counts.get(c)) for c in LEDGER_COUNTS]
        median = "-" if d.median_accepted is None else humanize.count(d.median_accepted)
        lines.append(
            f"| {d.business_date} | {d.region} | {d.status or 'never run'} | "
            + " | ".join(cells)
            + f" | {humanize.count(d.fact_rows)} | {humanize.count(d.rejects)} | {humanize.count(d.retractions)} | {median} "
            f"| {_signed_share(d.deviation)} |"
        )
    lines += ["", "## Volume vs history", ""]
    if r.volume_outliers:
        lines.append(
            f"Accepted rows more than {r.volume_warn_deviation:.0%} from the trailing median:"
        )
        lines.append("")
        lines += [
            f"- {d.business_date} {d.region}: {humanize.count(d.accepted)} vs median "
            f"{humanize.count(d.median_accepted)} ({_signed_share(d.deviation)})"
            for d in r.volume_outliers
        ]
    else:
        lines.append(
            f"No loaded day more than {r.volume_warn_deviation:.0%} from its trailing median "
            f"({sum(1 for d in r.days if d.median_accepted is not None)} region-day(s) with "
            "enough history)."
        )
    if chart:
        lines += ["", f"![daily accepted rows per region]({chart})"]
    lines += ["", "## Top reject reasons", ""]
    if r.reasons:
        lines += ["| reason | this period | period before | change |", "|---|---:|---:|---:|"]
        lines += [
            f"| `{t.reason}` | {humanize.count(t.this_period)} | {humanize.count(t.previous_period)} | "
            f"{t.change:+,} |"
            for t in r.reasons[:TOP_REASONS]
        ]
    else:
        lines.append("No rejects in this period or the one before.")
    lines += ["", "## Gate warnings and failures", ""]
    if r.gate_issues:
        lines += [
            "| date | region | check | status | measured | threshold | detail |",
            "|---|---|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {i.business_date} | {i.region} | `{i.check_name}` | {i.status.upper()} | "
            f"{_number(i.measured)} | {_number(i.threshold)} | {_table_text(i.detail)} |"
            for i in r.gate_issues
        ]
    else:
        lines.append("None.")
    lines += ["", "## Schema changes", ""]
    if r.schema_changes:
        lines += ["| first seen (UTC) | region | differences | batch |", "|---|---|---|---|"]
        lines += [
            f"| {c.first_seen_at.astimezone(UTC):%Y-%m-%d %H:%M} | {c.region} | "
            f"{_table_text(c.differences) or 'none'} | {c.batch_id} |"
            for c in r.schema_changes
        ]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def summary_message(report: QualityReport) -> AlertMessage:
    """The short Slack summary (mrkdwn): loaded, missing, gate, rejects, volume, schema."""
    r = report
    fails = sum(1 for i in r.gate_issues if i.status == "fail")
    warns = len(r.gate_issues) - fails
    loaded = sum(1 for d in r.days if d.status == "loaded")
    lines = [
        f"Loaded {loaded} of {len(r.days)} region-days; accepted "
        f"{humanize.count(r.total('rows_accepted'))}, rejected "
        f"{humanize.count(r.total('rows_rejected'))}, retracted "
        f"{humanize.count(r.total('rows_retracted'))}",
    ]
    if r.missing:
        missing = ", ".join(f"{d.region} {d.business_date}" for d in r.missing[:8])
        more = f" and {len(r.missing) - 8} more" if len(r.missing) > 8 else ""
        lines.append(f"Missing ({len(r.missing)}): {missing}{more}")
    else:
        lines.append("Missing: none")
    lines.append(f"Gate: {fails} failure(s), {warns} warning(s)")
    if r.reasons:
        top = r.reasons[0]
        lines.append(
            f"Top reject reason: {top.reason} {humanize.count(top.this_period)} "
            f"({top.change:+,} vs the period before)"
        )
    lines.append(
        f"Volume: {len(r.volume_outliers)} region-day(s) beyond "
        f"{r.volume_warn_deviation:.0%} of the trailing median"
    )
    lines.append(f"Schema changes: {len(r.schema_changes)}")
    return AlertMessage(
        title=f"Weekly data quality {r.start.isoformat()} to {r.end.isoformat()}",
        text="\n".join(f"• {line}" for line in lines),
    )


def volume_chart(report: QualityReport) -> str:
    """SVG: accepted rows per region and day of the range, with the trailing median."""
    return daily_volume_svg(
        report.accepted_series(), report.start, report.end, medians=report.medians()
    )


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value == int(value) else f"{value:.4g}"


def _signed_share(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def _table_text(text: str) -> str:
    """One table cell: no pipes or line breaks."""
    return " ".join(text.replace("|", "/").split())[:300]
