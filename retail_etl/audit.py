"""Source vs warehouse, per region and business date (``retail-etl audit``); plain code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from retail_etl.backfill import LedgerState, Pair, date_range, drifted_pairs, source_fingerprints
from retail_etl.fingerprint import SourceDayStats

#: ``AuditRow.fingerprint`` values
MATCH, CHANGED, NOT_LOADED, UNKNOWN = "match", "CHANGED", "not loaded", "unknown"


@dataclass(frozen=True)
class AuditRow:
    business_date: date
    region: str
    source_rows: int | None  # every row of the day, any status (None: source not read)
    source_live_rows: int | None  # completed and not deleted
    source_live_amount: Decimal | None
    fact_rows: int
    fact_amount: Decimal | None
    ledger_status: str | None  # latest ledger row's status (None: never run)
    fingerprint: str  # MATCH | CHANGED | NOT_LOADED | UNKNOWN
    action: str  # what a ``backfill --changed-only`` would do: "reprocess: <why>" or ""

    def as_record(self) -> dict[str, Any]:
        """For the table artifact (plain JSON values)."""
        return {
            "date": self.business_date.isoformat(),
            "region": self.region,
            "source_rows": self.source_rows,
            "source_live_rows": self.source_live_rows,
            "source_live_amount": _money(self.source_live_amount),
            "fact_rows": self.fact_rows,
            "fact_amount": _money(self.fact_amount),
            "ledger_status": self.ledger_status or "-",
            "fingerprint": self.fingerprint,
            "action": self.action,
        }


@dataclass(frozen=True)
class AuditReport:
    rows: list[AuditRow]
    errors: dict[str, str]  # region -> why its source was not read

    @property
    def drifted(self) -> list[AuditRow]:
        return [r for r in self.rows if r.action]

    def render(self) -> str:
        return render_audit(self.rows, self.errors)


def audit_rows(
    start: date,
    end: date,
    regions: Sequence[str],
    stats: Mapping[str, Mapping[date, SourceDayStats]],
    fact: Mapping[Pair, tuple[int, Decimal | None]],
    ledger: Mapping[Pair, LedgerState],
) -> list[AuditRow]:
    """One row per (date, region), dates in order. The fingerprint column compares the source
    now with the fingerprint recorded by the pair's latest ledger row when that row is 'loaded'."""
    drifted = drifted_pairs(ledger, source_fingerprints(stats))
    rows = []
    for day in date_range(start, end):
        for region in regions:
            pair = (region, day)
            source = stats.get(region, {}).get(day)
            state = ledger.get(pair)
            if state is None or state.status != "loaded":
                verdict = NOT_LOADED
            elif source is None or state.source_fingerprint is None:
                verdict = UNKNOWN
            else:
                verdict = MATCH if source.fingerprint == state.source_fingerprint else CHANGED
            rows_, amount = fact.get(pair, (0, None))
            rows.append(
                AuditRow(
                    business_date=day,
                    region=region,
                    source_rows=None if source is None else source.rows,
                    source_live_rows=None if source is None else source.live_rows,
                    source_live_amount=None if source is None else source.live_amount,
                    fact_rows=rows_,
                    fact_amount=amount,
                    ledger_status=None if state is None else state.status,
                    fingerprint=verdict,
                    action=f"reprocess: {drifted[pair]}" if pair in drifted else "",
                )
            )
    return rows


def render_audit(rows: Sequence[AuditRow], errors: Mapping[str, str] | None = None) -> str:
    """The audit as a text table, then the drifted pairs and the command that reprocesses them."""
    header = (
        f"{'date':<10}  {'region':<10} {'source rows':>11} {'live rows':>10} {'live amount':>15} "
        f"{'fact rows':>10} {'fact amount':>15}  {'ledger':<16} {'fingerprint':<11} action"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.business_date.isoformat():<10}  {r.region:<10} {_count(r.source_rows):>11} "
            f"{_count(r.source_live_rows):>10} {_money(r.source_live_amount):>15} "
            f"{_count(r.fact_rows):>10} {_money(r.fact_amount):>15}  "
            f"{r.ledger_status or '-':<16} {r.fingerprint:<11} {r.action}".rstrip()
        )
    for region, error in (errors or {}).items():
        lines.append(f"source of region {region} not read: {error}")
    todo = [r for r in rows if r.action]
    if todo and rows:
        lines.append(
            f"{len(todo)} (region, date) pair(s) to reprocess: retail-etl backfill "
            f"--start {rows[0].business_date} --end {rows[-1].business_date} --changed-only"
        )
    else:
        lines.append("no drift: every loaded (region, date) matches its source fingerprint")
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"
