"""End to end with the default four regions: the warehouse converges to the source's truth.

Refunds, cancellations, soft and hard deletes after a load leave ``sales_fact`` for
``sales_retractions`` with their reason; the latest version of a sale decides; a correction
that kept its ``updated_at`` lands; NaN money is rejected with its raw text; a source that lost
most of a day is stopped by the gate instead of mass-deleting it; reruns change nothing.
"""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from tests.pipeline import PipelineEnv, run_day

DAY = date(2024, 1, 15)
REGIONS = ["us_east", "us_west", "europe", "apac"]
LATER = f"{DAY} 23:00+00"


@pytest.fixture
def env(etl_env):
    return etl_env


def _loaded_ids(env: PipelineEnv, region: str, n: int) -> list[int]:
    """``n`` sale ids stored for the day whose source row is a single, clean version."""
    stored = [r[0] for r in env.fact(region, DAY)]
    single = {
        r[0]
        for r in env.source(
            region,
            "SELECT sale_id FROM sales WHERE sale_date = %s GROUP BY sale_id HAVING count(*) = 1",
            (DAY,),
        )
    }
    return [s for s in stored if s in single][:n]


def _ledger(env: PipelineEnv) -> list[tuple]:
    return env.warehouse(
        "SELECT batch_id, region, status, rows_extracted, rows_accepted, rows_rejected, "
        "rows_retracted, rows_inserted, rows_updated, rows_unchanged, rows_deleted "
        "FROM etl_load_ledger ORDER BY finished_at"
    )


def _snapshot(env: PipelineEnv) -> tuple[list, list, list]:
    return (
        env.warehouse("SELECT * FROM sales_fact ORDER BY region, sale_id"),
        env.warehouse("SELECT * FROM sales_retractions ORDER BY region, sale_id"),
        env.warehouse(
            "SELECT region, sale_id, reasons, raw_values FROM sales_rejects "
            "ORDER BY region, sale_id, reasons, raw_values"
        ),
    )


def test_source_changes_after_a_load_converge_and_reruns_change_nothing(env):
    env.seed(rows=1_000)
    state, _ = run_day(DAY)
    assert state.is_completed(), state.message

    refunded, cancelled, soft_deleted, hard_deleted, corrected, broken = _loaded_ids(
        env, "us_east", 6
    )
    change = "UPDATE sales SET {} , updated_at = %s::timestamptz WHERE sale_id = %s"
    env.source("us_east", change.format("status = 'refunded'"), (LATER, refunded))
    env.source("us_east", change.format("status = ' Cancelled'"), (LATER, cancelled))
    env.source("us_east", change.format("is_deleted = true"), (LATER, soft_deleted))
    env.source("us_east", "DELETE FROM sales WHERE sale_id = %s", (hard_deleted,))
    # a correction that keeps its updated_at: another store, same timestamp
    env.source("us_east", "UPDATE sales SET store_id = 999 WHERE sale_id = %s", (corrected,))
    # a newer version that breaks the rules: the stored version must not stand in for it
    env.source("us_east", change.format("customer_id = NULL"), (LATER, broken))
    # europe: two new sales with NUMERIC 'NaN' money
    for sale_id, discount, tax in ((9_000_001, "NaN", "0.50"), (9_000_002, "0.00", "NaN")):
        env.source(
            "europe",
            "INSERT INTO sales VALUES (%s, 1, 1, 1, 2, 10.00, %s::numeric, %s::numeric, 20.50, "
            "%s, 'completed', false, %s::timestamptz, %s::timestamptz)",
            (sale_id, discount, tax, DAY, f"{DAY} 10:00+00", f"{DAY} 10:00+00"),
        )
    # apac: a new sale whose latest version is refunded; the completed one must never load
    (apac_new,) = env.source(
        "apac", "SELECT max(sale_id) + 1 FROM sales WHERE sale_date = %s", (DAY,)
    )[0]
    for status, at in (("completed", f"{DAY} 10:00+00"), ("refunded", f"{DAY} 12:00+00")):
        env.source(
            "apac",
            "INSERT INTO sales VALUES (%s, 1, 1, 1, 1, 10.00, 0, 0, 10.00, %s, %s, false, "
            "%s::timestamptz, %s::timestamptz)",
            (apac_new, DAY, status, f"{DAY} 10:00+00", at),
        )
    before = {r[1]: r for r in _ledger(env)}

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    for region in REGIONS:  # sales_fact holds exactly the accepted latest versions
        assert env.fact(region, DAY) == env.expected_accepted(region, DAY), region
    east = summary.regions["us_east"]
    assert (east.rows_inserted, east.rows_updated, east.rows_deleted) == (0, 1, 5)
    assert east.rows_extracted == before["us_east"][3] - 1  # the hard-deleted row is gone
    retracted = env.warehouse(
        "SELECT sale_id, reason, json_extract_string(row_values, '$.sale_id'), source_values, "
        "batch_id FROM sales_retractions WHERE region = 'us_east' ORDER BY sale_id"
    )
    assert {r[0]: r[1] for r in retracted} == {
        refunded: "status_refunded",
        cancelled: "status_cancelled",
        soft_deleted: "deleted",
        hard_deleted: "missing_from_source",
        broken: "latest_version_rejected",
    }
    assert all(int(r[2]) == r[0] and r[4] == summary.batch_id for r in retracted)
    by_id = {r[0]: r for r in retracted}
    assert json.loads(by_id[refunded][3])["status"] == "refunded"
    assert by_id[hard_deleted][3] is None
    assert env.warehouse(
        "SELECT store_id FROM sales_fact WHERE region = 'us_east' AND sale_id = ?", [corrected]
    ) == [(999,)]
    nan_rejects = env.warehouse(
        "SELECT reasons, json_extract_string(raw_values, '$.discount'), "
        "json_extract_string(raw_values, '$.tax') FROM sales_rejects "
        "WHERE region = 'europe' AND sale_id > 9000000 ORDER BY sale_id"
    )
    assert nan_rejects[0][:2] == ("invalid_discount", "NaN")
    assert (nan_rejects[1][0], nan_rejects[1][2]) == ("invalid_tax", "NaN")
    apac = env.warehouse(
        "SELECT count(*) FROM sales_fact WHERE region = 'apac' AND sale_id = ?", [apac_new]
    )
    assert apac == [(0,)]
    assert summary.regions["apac"].rows_retracted == before["apac"][6] + 1
    for row in _ledger(env):  # every ledger row: extracted = accepted + rejected + retracted
        assert row[3] == row[4] + row[5] + row[6], row
    failed = env.warehouse("SELECT check_name FROM dq_results WHERE status = 'fail'")
    assert failed == []

    snapshot = _snapshot(env)
    for _ in range(2):  # the same source state again: nothing changes
        state, summary = run_day(DAY)
        assert state.is_completed(), state.message
        assert all(
            (o.rows_inserted, o.rows_updated, o.rows_deleted) == (0, 0, 0)
            for o in summary.regions.values()
        )
        assert _snapshot(env) == snapshot


def test_a_source_that_lost_most_of_its_day_is_stopped_not_mass_deleted(env, monkeypatch):
    env.seed(rows=1_000)
    state, _ = run_day(DAY)
    assert state.is_completed(), state.message
    stored = env.fact("apac", DAY)
    env.source("apac", "DELETE FROM sales WHERE sale_date = %s AND sale_id %% 2 = 0", (DAY,))

    state, summary = run_day(DAY)

    assert state.is_failed()
    assert "apac/missing_from_source_share" in state.message
    assert summary.regions["apac"].status == "gate_failed"
    assert env.fact("apac", DAY) == stored
    assert env.warehouse("SELECT count(*) FROM sales_retractions") == [(0,)]
    # the named check with its value vs threshold: (stored - source keys) / stored
    (share,) = re.findall(
        r"apac/missing_from_source_share = (\d+\.\d\d)% vs threshold 20\.00%", state.message
    )
    (stored_keys,) = env.warehouse(
        "SELECT count(*) FROM sales_fact WHERE region = 'apac' AND sale_date = ?", [DAY]
    )[0]
    (source_keys,) = env.source(
        "apac", "SELECT count(DISTINCT sale_id) FROM sales WHERE sale_date = %s", (DAY,)
    )[0]
    assert float(share) == round(100 * (stored_keys - source_keys) / stored_keys, 2)

    # an operator who knows the deletions are real allows them for one run
    monkeypatch.setenv("RETAIL_ETL_MAX_MISSING_SHARE", "0.6")
    state, summary = run_day(DAY)
    assert state.is_completed(), state.message
    assert env.fact("apac", DAY) == env.expected_accepted("apac", DAY)
    removed = summary.regions["apac"].rows_deleted
    assert removed == len(stored) - len(env.fact("apac", DAY)) > 0
    assert env.warehouse("SELECT DISTINCT reason FROM sales_retractions WHERE region = 'apac'") == [
        ("missing_from_source",)
    ]
