"""Late changes found by the lookback, audit, --changed-only, the scheduled day, deferral:
end-to-end flow runs on the default four regions (real PostgreSQL, DuckDB, ephemeral API)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from retail_etl.fingerprint import read_source_stats
from tests.pipeline import run_day

D = date(2024, 1, 15)
D2 = D + timedelta(days=1)
REGIONS = ["us_east", "us_west", "europe", "apac"]


@pytest.fixture
def env(etl_env, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RETAIL_ETL_MIN_ROWS_PER_REGION", "10")
    etl_env.seed(days=2, rows=400)
    return etl_env


def _ledger(env, day):  # type: ignore[no-untyped-def]
    return env.warehouse(
        "SELECT region, status, source_fingerprint FROM etl_load_ledger "
        "WHERE business_date = ? ORDER BY finished_at",
        [day],
    )


def _an_accepted_sale(env, region, day):  # type: ignore[no-untyped-def]
    return env.expected_accepted(region, day)[0][0]


def test_late_rows_are_found_by_the_next_days_run_with_no_manual_step(env):
    state, summary_of_first = run_day(D)
    assert state.is_completed(), state.message
    first = _ledger(env, D)
    assert sorted(r[0] for r in first) == sorted(REGIONS)
    assert all(status == "loaded" and fp for _, status, fp in first)
    # each read in its extraction's snapshot: the source's fingerprint of the day as extracted
    assert {r: fp for r, _, fp in first} == {
        r: read_source_stats(env.source_url(r), r, D, D)[D].fingerprint for r in REGIONS
    }
    assert "fingerprint" not in summary_of_first.stage_seconds  # no stage of its own

    # After the load: a late sale arrives in us_west, a sale is refunded in apac.
    (late_id,) = env.source("us_west", "SELECT max(sale_id) + 1000 FROM sales")[0]
    env.source(
        "us_west",
        "INSERT INTO sales SELECT %s, customer_id, store_id, product_id, quantity, unit_price, "
        "discount, tax, total_amount, sale_date, status, is_deleted, created_at, now() "
        "FROM sales WHERE sale_id = %s",
        (late_id, _an_accepted_sale(env, "us_west", D)),
    )
    env.source(
        "apac",
        "UPDATE sales SET status = 'refunded', updated_at = now() WHERE sale_id = %s",
        (_an_accepted_sale(env, "apac", D),),
    )

    state, summary = run_day(D2)  # the next daily run: its lookback re-checks D
    assert state.is_completed(), state.message
    assert summary.lookback == {f"{D} us_west": "loaded", f"{D} apac": "loaded"}
    assert "source changed since its load" in summary.lookback_reasons[f"{D} us_west"]
    assert f"lookback reprocessed {D} us_west, {D} apac" in state.message
    after = _ledger(env, D)
    assert after[: len(first)] == first
    assert sorted(r[0] for r in after[len(first) :]) == ["apac", "us_west"]  # only those
    assert env.fact("us_west", D) == env.expected_accepted("us_west", D)
    assert late_id in {row[0] for row in env.fact("us_west", D)}

    # The reprocessed rows recorded the source as it is now: the next run finds no drift.
    state, summary = run_day(D2)
    assert state.is_completed(), state.message
    assert summary.lookback == {}
    assert len(_ledger(env, D)) == len(after)


def test_audit_shows_a_drifted_day_and_changed_only_reprocesses_just_it(env, capsys):
    from cli.main import main
    from flows.backfill import retail_sales_backfill

    for day in (D, D2):
        state, _ = run_day(day)
        assert state.is_completed(), state.message
    fact_rows = env.warehouse(
        "SELECT count(*) FROM sales_fact WHERE region = 'europe' AND sale_date = ?", [D]
    )[0][0]
    env.source(
        "europe", "DELETE FROM sales WHERE sale_id = %s", (_an_accepted_sale(env, "europe", D),)
    )
    (source_rows,) = env.source("europe", "SELECT count(*) FROM sales WHERE sale_date = %s", (D,))[
        0
    ]

    assert main(["audit", "--start", str(D), "--end", str(D2)]) == 1  # drift found
    out = capsys.readouterr().out.splitlines()
    lines = {(line[:10], line.split()[1]): line for line in out if line[:4] == "2024"}
    assert len(lines) == 8
    europe = lines[(str(D), "europe")].split()
    assert europe[2] == f"{source_rows:,}" and europe[5] == f"{fact_rows:,}"
    assert europe[7:] == "loaded CHANGED reprocess: source changed since its load".split()
    for key, line in lines.items():
        if key != (str(D), "europe"):
            assert line.split()[-2:] == ["loaded", "match"], line
    assert out[-1] == (
        "1 (region, date) pair(s) to reprocess: retail-etl backfill --start 2024-01-15 "
        "--end 2024-01-16 --changed-only"
    )

    before = env.warehouse("SELECT count(*) FROM etl_load_ledger")[0][0]
    state = retail_sales_backfill(start_date=D, end_date=D2, changed_only=True, return_state=True)
    assert state.is_completed(), state.message
    new = env.warehouse(
        "SELECT business_date, region, status FROM etl_load_ledger ORDER BY finished_at"
    )[before:]
    assert new == [(D, "europe", "loaded")]

    assert main(["audit", "--start", str(D), "--end", str(D2)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "no drift: every loaded (region, date) matches its source fingerprint"


def test_a_late_started_scheduled_run_loads_its_scheduled_day(env):
    from prefect import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.etl import retail_sales_etl
    from retail_etl.run import summary_from_result

    # A flow run scheduled for 11:00 UTC on the 16th (the default schedule), that starts now,
    # years late, without a run_date: the way a worker runs a deployment's scheduled run.
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            retail_sales_etl,
            parameters={},
            state=Scheduled(scheduled_time=datetime(2024, 1, 16, 11, 0, tzinfo=UTC)),
        )
    state = run_flow(retail_sales_etl, flow_run=flow_run, return_type="state")
    assert state.is_completed(), state.message
    summary = summary_from_result(state.result(raise_on_failure=False))
    assert summary is not None and summary.run_date == D
    assert sorted((r, s) for r, s, _ in _ledger(env, D)) == [(r, "loaded") for r in sorted(REGIONS)]
    assert env.warehouse("SELECT count(*) FROM etl_load_ledger WHERE business_date <> ?", [D]) == [
        (0,)
    ]


def test_a_region_not_closed_is_deferred_then_loaded_by_a_later_run(env, monkeypatch):
    from retail_etl import closing

    # 02:00 New York on the 16th: Los Angeles' 15th ends at 08:00 UTC (+ 60 min grace).
    monkeypatch.setattr(closing, "now_utc", lambda: datetime(2024, 1, 16, 7, 0, tzinfo=UTC))
    state, summary = run_day(D)
    assert state.is_completed(), state.message
    assert {r: o.status for r, o in summary.regions.items()} == {
        "us_east": "loaded",
        "us_west": "deferred",
        "europe": "loaded",
        "apac": "loaded",
    }
    assert "deferred (day not closed): us_west" in state.message
    deferred = env.warehouse(
        "SELECT status, error, rows_extracted FROM etl_load_ledger WHERE region = 'us_west'"
    )
    assert [(s, n) for s, _, n in deferred] == [("deferred", 0)]
    assert "not closed before 2024-01-16 09:00 UTC" in deferred[0][1]
    assert env.fact("us_west", D) == []

    # The next day's run, after every region closed: its lookback picks up the deferred pair.
    monkeypatch.setattr(closing, "now_utc", lambda: datetime(2024, 1, 17, 11, 0, tzinfo=UTC))
    state, summary = run_day(D2)
    assert state.is_completed(), state.message
    assert summary.lookback == {f"{D} us_west": "loaded"}
    assert summary.lookback_reasons[f"{D} us_west"] == "latest ledger status deferred"
    assert env.fact("us_west", D) == env.expected_accepted("us_west", D)
    assert [r[1] for r in _ledger(env, D) if r[0] == "us_west"] == ["deferred", "loaded"]
