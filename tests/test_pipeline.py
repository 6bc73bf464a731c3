"""End to end on seeded PostgreSQL sources into DuckDB: every row accounted for, the gate
routes bad batches to the alert path, reruns are idempotent, late data lands exactly once."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import duckdb
import pytest

from retail_etl.seed import REJECT_KINDS, planted_dirt
from tests.pipeline import PipelineEnv, run_day
from tests.warehouse_faults import FaultPlan

DAY = date(2024, 1, 15)
REGIONS = ["us_east", "us_west", "europe", "apac"]
ROWS = 3_000


@pytest.fixture
def env(etl_env):
    return etl_env


def _seed(env: PipelineEnv, days: int = 1, rows: int = ROWS, start: date = DAY) -> None:
    env.seed(days=days, rows=rows, start=start)


def test_seeded_day_loads_exactly_the_expected_rows_and_reconciles(env):
    _seed(env)

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    assert summary.succeeded
    for region in REGIONS:
        expected = env.expected_accepted(region, DAY)
        assert env.fact(region, DAY) == expected, region
        outcome = summary.regions[region]
        # every row of the day is read; each one is accepted, rejected or retracted
        assert outcome.rows_extracted == ROWS
        assert outcome.rows_extracted == (
            outcome.rows_accepted + outcome.rows_rejected + outcome.rows_retracted
        )
        assert outcome.rows_accepted == len(expected) == outcome.rows_inserted
        # The reject reasons add up to the dirt the generator planted, and the retractions
        # to its non-completed and soft-deleted rows.
        planted = planted_dirt(env.source_url(region), DAY)
        assert {k: outcome.reject_reasons.get(k, 0) for k in REJECT_KINDS} == {
            k: planted[k] for k in REJECT_KINDS
        }
        assert outcome.rows_retracted == planted["not_completed"] + planted["deleted"] > 0
        assert outcome.rows_deleted == 0  # nothing stored yet, nothing to remove
        rejects = env.warehouse(
            "SELECT count(*) FROM sales_rejects WHERE region = ? AND sale_date = ?", [region, DAY]
        )[0][0]
        assert rejects == outcome.rows_rejected
    # Money stays exact: the source's extractable total = accepted + rejected, to the cent.
    for region in REGIONS:
        source_total = env.source(
            region,
            "SELECT sum(total_amount) FROM sales WHERE sale_date = %s AND status = 'completed' "
            "AND is_deleted IS NOT TRUE",
            (DAY,),
        )[0][0]
        fact_total = env.warehouse(
            "SELECT sum(total_amount) FROM sales_fact WHERE region = ?", [region]
        )[0][0]
        rejected_total = env.warehouse(
            "SELECT coalesce(sum(TRY_CAST(json_extract_string(raw_values, '$.total_amount') "
            "AS DECIMAL(12,2))), 0) FROM sales_rejects WHERE region = ?",
            [region],
        )[0][0]
        assert isinstance(fact_total, Decimal)
        assert fact_total + rejected_total == source_total
    ledger = env.warehouse(
        "SELECT region, status, rows_extracted, rows_accepted, rows_rejected, rows_retracted "
        "FROM etl_load_ledger ORDER BY region"
    )
    assert [(r[0], r[1]) for r in ledger] == [(r, "loaded") for r in sorted(REGIONS)]
    assert all(r[2] == r[3] + r[4] + r[5] for r in ledger)
    checks = env.warehouse("SELECT count(*), count(*) FILTER (status = 'fail') FROM dq_results")[0]
    assert checks[0] > 0 and checks[1] == 0


def test_rerunning_a_day_three_times_changes_nothing(env):
    _seed(env, rows=1_000)
    state, summary = run_day(DAY)
    assert state.is_completed(), state.message
    first = env.warehouse(
        "SELECT region, sale_id, updated_at, total_amount, batch_id FROM sales_fact ORDER BY 1, 2"
    )
    assert len(first) == sum(o.rows_accepted for o in summary.regions.values()) > 0

    for _ in range(2):
        state, summary = run_day(DAY)
        assert state.is_completed(), state.message
        assert all(o.rows_inserted == 0 and o.rows_updated == 0 for o in summary.regions.values())
        assert all(o.rows_unchanged == o.rows_accepted for o in summary.regions.values())

    assert (
        env.warehouse(
            "SELECT region, sale_id, updated_at, total_amount, batch_id FROM sales_fact ORDER BY 1, 2"
        )
        == first
    )
    runs = env.warehouse(
        "SELECT region, count(DISTINCT batch_id) FROM etl_load_ledger WHERE status = 'loaded' "
        "GROUP BY region ORDER BY region"
    )
    assert runs == [(r, 3) for r in sorted(REGIONS)]


def test_late_rows_and_updates_land_exactly_once(env):
    # A clean day of 1,000 accepted rows in us_east (no dirt: hand-made rows).
    _seed(env, rows=200)
    region = "us_east"
    env.source(region, "DELETE FROM sales WHERE sale_date = %s", (DAY,))
    env.source(
        region,
        "INSERT INTO sales SELECT i, i, 1, 1, 2, 10.00, 0, 0, 20.00, %s, 'completed', false, "
        "%s::timestamptz, %s::timestamptz FROM generate_series(1, 1000) i",
        (DAY, f"{DAY} 10:00+00", f"{DAY} 10:00+00"),
    )
    state, summary = run_day(DAY, [region])
    assert state.is_completed(), state.message
    assert summary.regions[region].rows_inserted == 1000

    # 50 late rows for the same day, and 30 existing sales corrected later.
    env.source(
        region,
        "INSERT INTO sales SELECT i, i, 1, 1, 2, 10.00, 0, 0, 20.00, %s, 'completed', false, "
        "%s::timestamptz, %s::timestamptz FROM generate_series(1001, 1050) i",
        (DAY, f"{DAY + timedelta(days=2)} 09:00+00", f"{DAY + timedelta(days=2)} 09:00+00"),
    )
    env.source(
        region,
        "UPDATE sales SET quantity = 3, total_amount = 30.00, updated_at = %s::timestamptz "
        "WHERE sale_id <= 30",
        (f"{DAY + timedelta(days=2)} 11:00+00",),
    )
    state, summary = run_day(DAY, [region])

    assert state.is_completed(), state.message
    outcome = summary.regions[region]
    assert (outcome.rows_inserted, outcome.rows_updated, outcome.rows_unchanged) == (50, 30, 970)
    assert env.warehouse(
        "SELECT count(*), count(DISTINCT sale_id), sum(quantity) FROM sales_fact WHERE region = ?",
        [region],
    ) == [(1050, 1050, 1050 * 2 + 30)]
    assert env.fact(region, DAY) == env.expected_accepted(region, DAY)


def test_a_failed_region_is_reprocessed_alone_without_touching_the_others(
    env, monkeypatch, etl_slack
):
    _seed(env, rows=1_000)
    env.point_source("europe", "postgresql+psycopg2://postgres@127.0.0.1:1/unreachable")
    state, summary = run_day(DAY)
    assert state.is_failed() and "europe" in state.message
    assert summary.regions["europe"].status == "extract_failed"
    assert len(etl_slack.texts) == 1
    assert "europe" in etl_slack.texts[0] and "Extraction failed" in etl_slack.texts[0]
    assert "retail-etl run --date 2024-01-15 --regions europe" in etl_slack.texts[0]
    others = env.warehouse(
        "SELECT region, sale_id, loaded_at, updated_in_warehouse_at FROM sales_fact ORDER BY 1, 2"
    )
    assert {row[0] for row in others} == {"us_east", "us_west", "apac"}
    assert env.warehouse(
        "SELECT status FROM etl_load_ledger WHERE region = 'europe' ORDER BY finished_at DESC LIMIT 1"
    ) == [("extract_failed",)]

    env.point_source("europe", None)
    state, summary = run_day(DAY, ["europe"])

    assert state.is_completed(), state.message
    assert env.fact("europe", DAY) == env.expected_accepted("europe", DAY)
    assert (
        env.warehouse(
            "SELECT region, sale_id, loaded_at, updated_in_warehouse_at FROM sales_fact "
            "WHERE region <> 'europe' ORDER BY 1, 2"
        )
        == others
    )


def test_too_few_rows_takes_the_alert_path_and_loads_nothing(env, etl_slack):
    _seed(env, rows=60)
    state, summary = run_day(DAY)
    assert state.is_failed()
    assert "quality gate failed" in state.message and "min_rows_region" in state.message
    assert summary.gate_verdict == "fail"
    assert all(o.status == "gate_failed" for o in summary.regions.values())
    assert len(etl_slack.texts) == 1
    assert "quality gate failed" in etl_slack.texts[0] and "min_rows_region" in etl_slack.texts[0]
    assert env.warehouse("SELECT count(*) FROM sales_fact")[0][0] == 0
    assert env.warehouse("SELECT DISTINCT status FROM etl_load_ledger") == [("gate_failed",)]
    # The failed batch's measures are kept for the audit trail, failing checks included.
    (batch,) = env.warehouse("SELECT DISTINCT batch_id FROM etl_load_ledger")
    dq = env.warehouse(
        "SELECT region, measured FROM dq_results WHERE batch_id = ? AND check_name = "
        "'min_rows_region' AND status = 'fail' ORDER BY region",
        [batch[0]],
    )
    assert [r for r, _ in dq] == sorted(summary.regions)
    assert all(value == summary.regions[r].rows_accepted for r, value in dq)


def test_ten_percent_null_customer_id_fails_the_gate_naming_the_check(env):
    _seed(env, rows=2_000)
    env.source(
        "europe",
        "UPDATE sales SET customer_id = NULL WHERE sale_id IN (SELECT sale_id FROM sales "
        "WHERE sale_date = %s AND status = 'completed' AND NOT is_deleted AND sale_id %% 10 = 3)",
        (DAY,),
    )
    state, _summary = run_day(DAY)
    assert state.is_failed()
    assert "europe/null_share_customer_id" in state.message
    assert env.warehouse("SELECT count(*) FROM sales_fact")[0][0] == 0


def test_a_region_far_below_its_history_fails_the_gate(env):
    _seed(env, days=4, rows=1_000)
    for offset in range(3):
        state, _ = run_day(DAY + timedelta(days=offset))
        assert state.is_completed(), state.message
    day4 = DAY + timedelta(days=3)
    env.source("apac", "DELETE FROM sales WHERE sale_date = %s AND sale_id %% 10 <> 0", (day4,))

    state, summary = run_day(day4)

    assert state.is_failed()
    assert "apac/history_volume" in state.message
    assert summary.regions["apac"].status == "gate_failed"
    assert env.warehouse("SELECT count(*) FROM sales_fact WHERE sale_date = ?", [day4])[0][0] == 0


def test_a_warehouse_failure_mid_load_applies_nothing_and_a_rerun_loads_once(env, monkeypatch):
    _seed(env, rows=1_000)
    # The MERGE has run inside the transaction when its ledger rows are written: the first
    # three loads (both regions in one transaction, then each region on its own) fail there;
    # recording the failures afterwards works.
    with monkeypatch.context() as patch:
        plan = FaultPlan("ledger", nth=1, times=3).install(patch)
        state, summary = run_day(DAY, ["us_east", "europe"])

    assert plan.failed == 3
    assert state.is_failed()
    assert (
        "load failed for us_east" in state.message and "injected warehouse failure" in state.message
    )
    assert {summary.regions[r].status for r in ("us_east", "europe")} == {"load_failed"}
    assert env.warehouse("SELECT count(*) FROM sales_fact")[0][0] == 0
    assert env.warehouse("SELECT region, status FROM etl_load_ledger ORDER BY region") == [
        ("europe", "load_failed"),
        ("us_east", "load_failed"),
    ]

    state, summary = run_day(DAY, ["us_east", "europe"])

    assert state.is_completed(), state.message
    for region in ("us_east", "europe"):
        assert env.fact(region, DAY) == env.expected_accepted(region, DAY)
        assert summary.regions[region].rows_inserted == summary.regions[region].rows_accepted
    assert env.warehouse("SELECT count(*), count(DISTINCT (region, sale_id)) FROM sales_fact") == [
        (summary.regions["us_east"].rows_accepted + summary.regions["europe"].rows_accepted,) * 2
    ]


def test_a_warehouse_that_cannot_stage_for_the_load_fails_every_region(env, monkeypatch):
    _seed(env, rows=500)
    # Only the loads fail (every stage table they create); the run's other warehouse steps work.
    with monkeypatch.context() as patch:
        plan = FaultPlan(
            "create_stage",
            times=None,
            message="cannot open the DuckDB warehouse: held by another process",
        ).install(patch)
        state, summary = run_day(DAY, ["us_east", "europe"])

    assert plan.failed == 3  # the load of both regions in one transaction, then each alone
    assert state.is_failed()
    for region in ("us_east", "europe"):
        assert summary.regions[region].status == "load_failed"
        assert "held by another process" in (summary.regions[region].error or "")
    assert env.warehouse("SELECT count(*) FROM sales_fact")[0][0] == 0
    assert env.warehouse("SELECT region, status FROM etl_load_ledger ORDER BY region") == [
        ("europe", "load_failed"),
        ("us_east", "load_failed"),
    ]


def test_a_failed_post_load_check_fails_the_run_by_name_and_alerts(env, etl_slack):
    _seed(env, rows=1_000)
    state, _ = run_day(DAY, ["us_east"])
    assert state.is_completed(), state.message
    # Someone writes into the fact table by hand: a second copy of one sale.
    with duckdb.connect(str(env.duckdb_path)) as con:
        con.execute(
            "INSERT INTO sales_fact SELECT * FROM sales_fact WHERE region = 'us_east' "
            "ORDER BY sale_id LIMIT 1"
        )

    state, summary = run_day(DAY, ["us_east"])

    assert state.is_failed()
    assert "post-load verification failed" in state.message
    assert "fact_unique_keys" in state.message
    assert summary.regions["us_east"].status == "verify_failed"
    assert env.warehouse(
        "SELECT status FROM etl_load_ledger WHERE region = 'us_east' ORDER BY finished_at DESC LIMIT 1"
    ) == [("verify_failed",)]
    assert len(etl_slack.texts) == 1 and "fact_unique_keys" in etl_slack.texts[0]


FIFTY = [*REGIONS, *(f"region_{i:02d}" for i in range(5, 51))]


def test_a_fifty_region_day_loads_and_reconciles_every_region(env, monkeypatch):
    # Regions are configuration: 50 of them (tiny days) go through the same run.
    from blocks.sources import register_source_blocks
    from retail_etl.settings import get_settings

    monkeypatch.setenv("RETAIL_ETL_REGIONS", ",".join(FIFTY))
    # 300 rows a region: the planted dirt's share varies more than on a real day
    monkeypatch.setenv("RETAIL_ETL_MAX_REJECT_RATE", "0.2")
    register_source_blocks(get_settings(fresh=True))
    fifty = PipelineEnv(env.server_url, env.prefix, FIFTY, env.tmp, monkeypatch)
    fifty.seed(rows=300)

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    assert sorted(summary.regions) == sorted(FIFTY)
    facts = {
        region: (count, total)
        for region, count, total in fifty.warehouse(
            "SELECT region, count(*), sum(total_amount) FROM sales_fact WHERE sale_date = ? "
            "GROUP BY region",
            [DAY],
        )
    }
    for region in FIFTY:
        expected = fifty.expected_accepted(region, DAY)
        outcome = summary.regions[region]
        assert outcome.status == "loaded", region
        assert outcome.rows_extracted == 300
        assert outcome.rows_extracted == (
            outcome.rows_accepted + outcome.rows_rejected + outcome.rows_retracted
        ), region
        assert facts[region] == (len(expected), sum(row[8] for row in expected)), region
        assert outcome.rows_inserted == len(expected)
    ledger = fifty.warehouse(
        "SELECT region, status, rows_extracted, rows_accepted, rows_rejected, rows_retracted "
        "FROM etl_load_ledger WHERE business_date = ? ORDER BY region",
        [DAY],
    )
    assert [(r[0], r[1]) for r in ledger] == [(r, "loaded") for r in sorted(FIFTY)]
    assert all(r[2] == r[3] + r[4] + r[5] for r in ledger)
    failed = fifty.warehouse("SELECT count(*) FROM dq_results WHERE status = 'fail'")[0][0]
    assert failed == 0


def test_a_region_the_store_cannot_stage_fails_alone(env, monkeypatch):
    """The regions are staged in one task; a store error on one region's files fails that
    region, named, with nothing of it loaded, and the other region loads."""
    from retail_etl.staging import LocalStagingStore, StagingError

    _seed(env, rows=500)
    real_stage = LocalStagingStore.stage_dataset

    def stage_dataset(self, name, business_date, region, *args, **kwargs):  # type: ignore[no-untyped-def]
        if region == "europe" and name == "rejects":
            raise StagingError(f"cannot write rejects of region {region}: disk full")
        return real_stage(self, name, business_date, region, *args, **kwargs)

    monkeypatch.setattr(LocalStagingStore, "stage_dataset", stage_dataset)
    state, summary = run_day(DAY, ["us_east", "europe"])

    assert state.is_failed()
    europe = summary.regions["europe"]
    assert europe.status == "load_failed"
    assert europe.error == "StagingError: cannot write rejects of region europe: disk full"
    assert summary.regions["us_east"].status == "loaded"
    assert env.fact("us_east", DAY) == env.expected_accepted("us_east", DAY)
    assert env.warehouse("SELECT DISTINCT region FROM sales_fact") == [("us_east",)]
