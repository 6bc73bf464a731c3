"""Schema changes in the sources, end to end: real PostgreSQL tables altered after seeding,
the whole pipeline into DuckDB (see README, "Schema changes")."""

from __future__ import annotations

from datetime import date

import pytest

from retail_etl.run import RunSummary
from tests.pipeline import EXPECTED_ACCEPTED_SQL, PipelineEnv, run_day

DAY = date(2024, 1, 15)
REGIONS = ["us_east", "us_west", "europe", "apac"]


@pytest.fixture
def env(etl_env: PipelineEnv) -> PipelineEnv:
    etl_env.seed(days=1, rows=1_000, start=DAY)
    return etl_env


@pytest.fixture
def slack(etl_slack):  # type: ignore[no-untyped-def]
    return etl_slack


def _loaded_as_expected(env: PipelineEnv, summary: RunSummary, regions: list[str]) -> None:
    for region in regions:
        outcome = summary.regions[region]
        assert outcome.status == "loaded", (region, outcome.error)
        expected = env.expected_accepted(region, DAY)
        assert env.fact(region, DAY) == expected, region
        assert outcome.rows_extracted == (
            outcome.rows_accepted + outcome.rows_rejected + outcome.rows_retracted
        )


def _history(env: PipelineEnv) -> list[tuple[str, str, str, str]]:
    return env.warehouse(
        "SELECT region, fingerprint, differences, first_seen_batch_id "
        "FROM source_schema_history ORDER BY region, first_seen_at"
    )


def test_new_column_is_kept_in_extras_and_warned_about_once(env, slack):
    env.source(
        "us_east",
        "ALTER TABLE sales ADD COLUMN loyalty_tier text; "
        "UPDATE sales SET loyalty_tier = 'tier' || (sale_id % 3)",
    )

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    _loaded_as_expected(env, summary, REGIONS)
    assert len(summary.schema_warnings) == 1
    assert summary.schema_warnings[0].startswith("us_east: source schema changed")
    assert "new column loyalty_tier (text)" in summary.schema_warnings[0]
    # The new column's values travel on every fact row of the region, parseable later.
    extras = env.warehouse(
        "SELECT sale_id, json_extract_string(extras, '$.loyalty_tier') FROM sales_fact "
        "WHERE region = 'us_east' ORDER BY sale_id"
    )
    assert len(extras) == len(env.expected_accepted("us_east", DAY))
    assert all(tier == f"tier{sale_id % 3}" for sale_id, tier in extras)
    assert env.warehouse(
        "SELECT count(*) FROM sales_fact WHERE region <> 'us_east' AND extras IS NOT NULL"
    ) == [(0,)]
    # History: one row per region; only us_east differs from the contract.
    history = _history(env)
    assert [(r[0], r[2]) for r in history] == [
        ("apac", "matches the contract"),
        ("europe", "matches the contract"),
        ("us_east", "new column loyalty_tier (text)"),
        ("us_west", "matches the contract"),
    ]
    assert {r[3] for r in history} == {summary.batch_id}
    assert len(slack.texts) == 1
    assert "Schema changes" in slack.texts[0] and "loyalty_tier" in slack.texts[0]

    # The same schema the next time: nothing new recorded, no warning, no second message.
    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    assert summary.schema_warnings == []
    assert _history(env) == history
    assert len(slack.texts) == 1


def test_missing_required_column_fails_only_that_region_naming_it(env):
    env.source("europe", "ALTER TABLE sales DROP COLUMN customer_id")

    state, summary = run_day(DAY)

    assert state.is_failed()
    assert "europe" in state.message and "customer_id" in state.message
    europe = summary.regions["europe"]
    assert europe.status == "extract_failed"
    assert "required column customer_id is missing from table sales" in europe.error
    assert "(after 1 attempt(s))" in europe.error  # a contract error is not retried
    _loaded_as_expected(env, summary, ["us_east", "us_west", "apac"])
    assert env.warehouse("SELECT count(*) FROM sales_fact WHERE region = 'europe'") == [(0,)]
    assert env.warehouse(
        "SELECT status FROM etl_load_ledger WHERE region = 'europe' AND business_date = ?", [DAY]
    ) == [("extract_failed",)]


def test_renamed_column_is_read_through_the_configured_alias(env, monkeypatch):
    monkeypatch.setenv("RETAIL_ETL_COLUMN_ALIASES", '{"customer_id": ["customer_uuid"]}')
    env.source("us_west", "ALTER TABLE sales RENAME COLUMN customer_id TO customer_uuid")

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    # us_west migrated, the others not: every region loads.
    _loaded_as_expected(env, summary, ["us_east", "europe", "apac"])
    expected = env.source(
        "us_west", EXPECTED_ACCEPTED_SQL.replace("customer_id", "customer_uuid"), {"day": DAY}
    )
    assert len(expected) > 800
    assert env.fact("us_west", DAY) == expected
    assert summary.schema_warnings == [
        f"us_west: source schema changed (fingerprint {_fingerprint(env, 'us_west')}): "
        "customer_id read from customer_uuid"
    ]


def test_quantity_turned_text_rejects_only_the_rows_that_cannot_be_cast(env):
    region = "europe"
    before = env.expected_accepted(region, DAY)
    # Four otherwise acceptable sales get a quantity that is not an integer.
    bad = {before[i][0]: value for i, value in ((5, "abc"), (50, "1.5"), (150, "3x"), (400, "two"))}
    env.source(region, "ALTER TABLE sales ALTER COLUMN quantity TYPE text USING quantity::text")
    for sale_id, value in bad.items():
        env.source(region, "UPDATE sales SET quantity = %s WHERE sale_id = %s", (value, sale_id))

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    _loaded_as_expected(env, summary, ["us_east", "us_west", "apac"])
    assert env.fact(region, DAY) == [row for row in before if row[0] not in bad]
    invalid = env.warehouse(
        "SELECT sale_id, reasons, json_extract_string(raw_values, '$.quantity') "
        "FROM sales_rejects WHERE region = ? AND reasons LIKE '%invalid_quantity%' ORDER BY 1",
        [region],
    )
    assert {(sale_id, value) for sale_id, _, value in invalid} == set(bad.items())
    outcome = summary.regions[region]
    assert outcome.reject_reasons["invalid_quantity"] == len(invalid)
    assert outcome.rows_extracted == (
        outcome.rows_accepted + outcome.rows_rejected + outcome.rows_retracted
    )
    assert outcome.rows_accepted == len(before) - len(bad) == outcome.rows_inserted
    assert env.warehouse(
        "SELECT count(*) FROM sales_rejects WHERE region = ? AND sale_date = ?", [region, DAY]
    ) == [(outcome.rows_rejected,)]
    assert "quantity is text (contract integer)" in summary.schema_warnings[0]


def test_unit_price_with_more_decimals_stops_the_region_as_lossy(env):
    env.source("apac", "ALTER TABLE sales ALTER COLUMN unit_price TYPE numeric(12,4)")

    state, summary = run_day(DAY)

    assert state.is_failed()
    apac = summary.regions["apac"]
    assert apac.status == "extract_failed"
    for text in (state.message, apac.error):
        assert "apac" in text and "unit_price" in text and "numeric(12,4)" in text
        assert "could lose precision" in text
    _loaded_as_expected(env, summary, ["us_east", "us_west", "europe"])
    assert env.warehouse("SELECT count(*) FROM sales_fact WHERE region = 'apac'") == [(0,)]


def _fingerprint(env: PipelineEnv, region: str) -> str:
    rows = env.warehouse(
        "SELECT fingerprint FROM source_schema_history WHERE region = ? "
        "ORDER BY first_seen_at DESC LIMIT 1",
        [region],
    )
    return str(rows[0][0])
