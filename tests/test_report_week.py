"""The weekly quality report end to end: a seeded week run through the pipeline (rejects, a
retraction, a schema change, a day never run, a gate failure), the report's numbers checked
against the warehouse tables, the artifact, the Slack summary, the CLI file and chart."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tests.pipeline import PipelineEnv, flow_run_artifacts, run_day

PREVIOUS, D15, D16, D17, D18 = (date(2024, 1, 14) + timedelta(days=n) for n in range(5))
REGIONS = ["us_east", "europe"]

pytestmark = pytest.mark.integration


def _latest_ledger(env: PipelineEnv, region: str, day: date) -> tuple | None:
    rows = env.warehouse(
        "SELECT status, rows_accepted, rows_rejected, rows_retracted FROM etl_load_ledger "
        "WHERE region = ? AND business_date = ? ORDER BY finished_at DESC LIMIT 1",
        [region, day],
    )
    return rows[0] if rows else None


def _count(env: PipelineEnv, table: str, region: str, day: date) -> int:
    return env.warehouse(
        f"SELECT count(*) FROM {table} WHERE region = ? AND sale_date = ?",
        [region, day],
    )[0][0]


def _reasons(env: PipelineEnv, start: date, end: date) -> dict[str, int]:
    return dict(
        env.warehouse(
            "SELECT reason, count(*) FROM (SELECT unnest(string_split(reasons, ';')) AS reason "
            "FROM sales_rejects WHERE sale_date BETWEEN ? AND ?) GROUP BY reason",
            [start, end],
        )
    )


def test_a_seeded_week_reads_as_the_tables_say(etl_env, etl_slack, monkeypatch, tmp_path, capsys):
    from cli.main import main
    from flows.report import retail_sales_quality_report
    from retail_etl.report import QualityReport, render_markdown

    env = etl_env
    env.regions = REGIONS
    monkeypatch.setenv("RETAIL_ETL_REGIONS", ",".join(REGIONS))
    env.seed(days=5, rows=400, start=PREVIOUS)
    for day in (PREVIOUS, D15):
        assert run_day(day)[0].is_completed()
    # a refund after the load: the rerun retracts the sale
    (refunded,) = env.warehouse(
        "SELECT min(sale_id) FROM sales_fact WHERE region = 'us_east' AND sale_date = ?", [D15]
    )[0]
    env.source(
        "us_east",
        "UPDATE sales SET status = 'refunded', updated_at = %s::timestamptz WHERE sale_id = %s",
        (f"{D15} 23:00+00", refunded),
    )
    assert run_day(D15)[0].is_completed()
    # a new column before D16: a schema change warning
    env.source("us_east", "ALTER TABLE sales ADD COLUMN loyalty_tier text")
    assert run_day(D16)[0].is_completed()
    # D17 never runs; D18 fails the gate
    monkeypatch.setenv("RETAIL_ETL_MIN_ROWS_PER_REGION", "100000")
    assert not run_day(D18)[0].is_completed()
    monkeypatch.delenv("RETAIL_ETL_MIN_ROWS_PER_REGION")

    state = retail_sales_quality_report(start_date=D15, end_date=D18, return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, QualityReport)
    for day_report in report.days:
        region, day = day_report.region, day_report.business_date
        ledger = _latest_ledger(env, region, day)
        if ledger is None:
            assert day_report.status is None
        else:
            status, accepted, rejected, retracted = ledger
            assert day_report.status == status
            assert day_report.counts["rows_accepted"] == accepted
            assert day_report.counts["rows_rejected"] == rejected
            assert day_report.counts["rows_retracted"] == retracted
        assert day_report.fact_rows == _count(env, "sales_fact", region, day)
        assert day_report.rejects == _count(env, "sales_rejects", region, day)
        assert day_report.retractions == _count(env, "sales_retractions", region, day)
    by_pair = {(d.region, d.business_date): d for d in report.days}
    assert by_pair[("us_east", D15)].retractions == 1
    assert by_pair[("us_east", D15)].rejects > 0
    assert [(d.region, d.business_date, d.status) for d in report.missing] == [
        ("us_east", D17, None),
        ("europe", D17, None),
        ("us_east", D18, "gate_failed"),
        ("europe", D18, "gate_failed"),
    ]
    this_week, week_before = _reasons(env, D15, D18), _reasons(env, D15 - timedelta(4), PREVIOUS)
    assert week_before  # the previous day's rejects are the trend's base
    assert {t.reason: (t.this_period, t.previous_period) for t in report.reasons} == {
        reason: (this_week.get(reason, 0), week_before.get(reason, 0))
        for reason in this_week | week_before
    }
    failed = env.warehouse(
        "SELECT region, check_name FROM dq_results WHERE business_date = ? AND status = 'fail' "
        "ORDER BY region, check_name",
        [D18],
    )
    assert ("us_east", "min_rows_region") in failed
    assert sorted((i.region, i.check_name) for i in report.gate_issues if i.status == "fail") == (
        failed
    )
    assert [(c.region, "loyalty_tier" in c.differences) for c in report.schema_changes] == [
        ("us_east", True)
    ]
    # the artifact and the Slack summary
    key = f"quality-report-{D15}-{D18}"
    artifact = flow_run_artifacts(state.state_details.flow_run_id)[key]
    assert artifact.data.startswith(f"# Data quality report {D15} to {D18}")
    assert "data:image/svg+xml;base64," in artifact.data
    slack = etl_slack.wait_for(lambda text: "Weekly data quality" in text, timeout=10)
    assert slack is not None and "Missing (4): us_east 2024-01-17" in slack

    # the CLI offline: the same markdown, the chart next to the file
    out = tmp_path / "weekly" / "report.md"
    out.parent.mkdir()
    assert main(["report", "--start", str(D15), "--end", str(D18), "--out", str(out)]) == 0
    chart = out.parent / "report-volume.svg"
    assert out.read_text() == render_markdown(report, chart=chart.name)
    svg = chart.read_text()
    assert svg.startswith("<svg") and svg.count("<title>") == sum(
        1 for d in report.days if d.status == "loaded"
    )
    capsys.readouterr()
    assert main(["report", "--start", str(D15), "--end", str(D18)]) == 0
    assert capsys.readouterr().out == render_markdown(report)
    assert main(["report", "--start", str(D18), "--end", str(D15)]) == 2
