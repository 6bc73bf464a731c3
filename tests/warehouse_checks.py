"""Checks shared by the DuckDB and Snowflake (fakesnow) warehouse tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from typing import Any

from retail_etl.backfill import LedgerState
from retail_etl.warehouse.base import LedgerEntry, RegionLoad


def check_fingerprints_and_day_stats(wh: Any, batch: RegionLoad, expected_amount: Decimal) -> None:
    """The 'loaded' row carries the batch's source fingerprint; ``ledger_states`` gives each
    pair's latest row; ``fact_day_stats`` counts and sums the fact per (region, date)."""
    day = batch.business_date
    wh.load_region(replace(batch, source_fingerprint="fp-1"))
    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    wh.record_ledger(LedgerEntry("b-def", "us_west", day, "deferred", finished_at=later))
    wh.record_ledger(LedgerEntry("b-old", "europe", day, "loaded", source_fingerprint="old"))
    wh.record_ledger(
        LedgerEntry("b-new", "europe", day, "gate_failed", finished_at=later, error="x")
    )
    outside = day + dt.timedelta(days=5)
    wh.record_ledger(LedgerEntry("b-out", "us_east", outside, "loaded", source_fingerprint="o"))

    assert wh.ledger_states(day - dt.timedelta(days=1), day + dt.timedelta(days=1)) == {
        ("us_east", day): LedgerState("loaded", "fp-1"),
        ("us_west", day): LedgerState("deferred", None),
        ("europe", day): LedgerState("gate_failed", None),
    }
    assert wh.fact_day_stats(day, day) == {("us_east", day): (batch.staged_rows, expected_amount)}
    assert wh.fact_day_stats(outside, outside) == {}
