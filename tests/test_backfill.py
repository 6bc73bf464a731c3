"""Backfill: plan (pure) and the flow over seeded days with --missing-only."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from retail_etl.backfill import date_range, plan_backfill
from tests.pipeline import run_day

D1 = date(2024, 1, 15)


def test_plan_runs_dates_in_order_and_skips_loaded_pairs():
    loaded = {("us_east", D1), ("europe", D1), ("us_east", D1 + timedelta(days=1))}
    plan = plan_backfill(
        D1, D1 + timedelta(days=2), ["us_east", "europe"], missing_only=True, loaded=loaded
    )
    assert [(d.run_date, d.regions, d.skipped) for d in plan] == [
        (D1, (), ("us_east", "europe")),
        (D1 + timedelta(days=1), ("europe",), ("us_east",)),
        (D1 + timedelta(days=2), ("us_east", "europe"), ()),
    ]
    everything = plan_backfill(D1, D1, ["us_east"], missing_only=False, loaded=loaded)
    assert everything[0].regions == ("us_east",)


def test_summary_rows_say_what_a_skipped_pair_is():
    from retail_etl.backfill import BackfillResult, LedgerState, note_skipped_states, summary_rows

    missing_only = BackfillResult(D1, ("europe",), ("us_east",), {"europe": "loaded"})
    changed_only = BackfillResult(D1, (), ("us_east", "europe"))
    note_skipped_states([changed_only], {("us_east", D1): LedgerState("loaded", "f")})
    assert [(r["region"], r["action"], r["status"]) for r in summary_rows([missing_only])] == [
        ("europe", "ran", "loaded"),
        ("us_east", "skipped (loaded, unchanged)", "loaded"),
    ]
    assert [(r["region"], r["action"], r["status"]) for r in summary_rows([changed_only])] == [
        ("europe", "skipped (not loaded)", "never run"),
        ("us_east", "skipped (loaded, unchanged)", "loaded"),
    ]


def test_date_range_refuses_an_inverted_range():
    with pytest.raises(ValueError, match="before start"):
        date_range(D1, D1 - timedelta(days=1))


def _child_states(flow_run_id):  # type: ignore[no-untyped-def]
    """Names -> state types of a flow run's task runs and of its subflow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        flows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    return {
        "tasks": {t.name: t.state_type.value for t in tasks if t.name.startswith("backfill-20")},
        "flows": {f.name: f.state_type.value for f in flows},
    }


def _ledger(env):  # type: ignore[no-untyped-def]
    return env.warehouse(
        "SELECT business_date, region, status, batch_id FROM etl_load_ledger ORDER BY finished_at"
    )


def test_missing_only_backfill_loads_only_what_the_ledger_lacks(etl_env, monkeypatch):
    from flows.backfill import retail_sales_backfill

    env = etl_env
    env.seed(days=7, rows=400)
    monkeypatch.setenv("RETAIL_ETL_MIN_ROWS_PER_REGION", "10")
    for offset in range(3):
        state, _ = run_day(D1 + timedelta(days=offset))
        assert state.is_completed(), state.message
    before = _ledger(env)
    merged_days_1_3 = env.warehouse(
        "SELECT region, sale_date, count(*), max(batch_id) FROM sales_fact GROUP BY 1, 2 ORDER BY 1, 2"
    )

    # Europe's source breaks on day 5 only during the backfill (reading that day errors).
    day5 = D1 + timedelta(days=4)
    env.source("europe", "ALTER TABLE sales RENAME TO sales_offline")
    env.source(
        "europe",
        "CREATE VIEW sales AS SELECT sale_id, "
        "CASE WHEN sale_date = %s THEN customer_id / (sale_id - sale_id) ELSE customer_id END AS customer_id, "
        "store_id, product_id, quantity, unit_price, discount, tax, total_amount, sale_date, "
        "status, is_deleted, created_at, updated_at FROM sales_offline",
        (day5,),
    )
    state = retail_sales_backfill(
        start_date=D1, end_date=D1 + timedelta(days=6), missing_only=True, return_state=True
    )
    env.source("europe", "DROP VIEW sales; ALTER TABLE sales_offline RENAME TO sales")

    assert state.is_failed()
    assert state.message.startswith(
        f"backfill 2024-01-15..01-21: 1 of 16 (region, date) pair(s) not loaded on 1 day(s) "
        f"({day5}); extraction failed: 1; 15 loaded, 12 already loaded (skipped)"
    )
    # The failed day is a Failed task and subflow; the other days are green.
    day_states = _child_states(state.state_details.flow_run_id)
    assert day_states["tasks"] == {
        f"backfill-{D1 + timedelta(days=n)}": "FAILED" if n == 4 else "COMPLETED" for n in range(7)
    }
    assert day_states["flows"] == {
        f"retail-sales-etl {D1 + timedelta(days=n)}": "FAILED" if n == 4 else "COMPLETED"
        for n in range(3, 7)
    }
    after = _ledger(env)
    new_rows = after[len(before) :]
    assert after[: len(before)] == before
    # Days 1-3 were not re-merged: no new ledger row for them, their fact rows untouched.
    assert {row[0] for row in new_rows} == {D1 + timedelta(days=n) for n in range(3, 7)}
    assert (
        env.warehouse(
            "SELECT region, sale_date, count(*), max(batch_id) FROM sales_fact "
            "WHERE sale_date <= ? GROUP BY 1, 2 ORDER BY 1, 2",
            [D1 + timedelta(days=2)],
        )
        == merged_days_1_3
    )
    assert env.warehouse("SELECT count(DISTINCT (region, sale_date)) FROM sales_fact") == [
        (4 * 7 - 1,)
    ]

    # The next missing-only run picks up exactly the failed pair.
    state = retail_sales_backfill(
        start_date=D1, end_date=D1 + timedelta(days=6), missing_only=True, return_state=True
    )
    assert state.is_completed(), state.message
    last = _ledger(env)[len(after) :]
    assert [(row[0], row[1], row[2]) for row in last] == [(day5, "europe", "loaded")]
    assert env.fact("europe", day5) == env.expected_accepted("europe", day5)


def test_a_backfill_over_empty_days_sends_one_message_naming_them(etl_env, etl_slack, monkeypatch):
    from flows.backfill import retail_sales_backfill

    env = etl_env
    env.seed(days=1, rows=400)  # only D1 holds sales
    monkeypatch.setenv("RETAIL_ETL_MIN_ROWS_PER_REGION", "10")
    before, after = D1 - timedelta(days=2), D1 + timedelta(days=1)

    state = retail_sales_backfill(start_date=before, end_date=after, return_state=True)

    assert state.is_failed()
    assert state.message == (
        "backfill 2024-01-13..01-16: 12 of 16 (region, date) pair(s) not loaded on 3 day(s) "
        "(2024-01-13..01-14, 2024-01-16); the source holds 0 rows: 12; 4 loaded; alerted on Slack"
    )
    assert len(state.message) < 200
    (text,) = etl_slack.texts  # one message for the range, none per day
    assert text.startswith(
        "*retail-sales-backfill 2024-01-13..01-16 FAILED: 12 of 16 (region, date) pair(s) "
        "not loaded*"
    )
    assert "*the source holds 0 rows* (12 pair(s)):" in text
    assert "`us_east`, `us_west`, `europe`, `apac`: 2024-01-13..01-14, 2024-01-16" in text
    assert "*Loaded*: 4 pair(s)" in text
    assert "`retail-etl backfill --start 2024-01-13 --end 2024-01-16 --missing-only`" in text
    assert "run_date=" not in text  # no per-day rerun advice
    assert env.warehouse("SELECT DISTINCT sale_date FROM sales_fact") == [(D1,)]
