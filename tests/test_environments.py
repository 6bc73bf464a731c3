"""Environments (RETAIL_ETL_ENV): blocks of two environments side by side on one Prefect API,
and the per-environment deployments of prefect.yaml."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from retail_etl.settings import ENVIRONMENTS
from tests.pipeline import flow_run_artifacts

REPO = Path(__file__).resolve().parents[1]


def test_two_environments_register_their_blocks_without_collision(prefect_api, monkeypatch, capsys):
    from prefect_slack import SlackWebhook

    from blocks.sources import load_source_url
    from cli.main import main
    from retail_etl.settings import get_settings

    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("RETAIL_ETL_REGIONS", "us_east")
    monkeypatch.setenv("RETAIL_ETL_SOURCE_BLOCK_PREFIX", prefix)
    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", f"{prefix}slack")
    monkeypatch.setenv("RETAIL_ETL_CREDENTIALS", "blocks")
    # The CLI's --env sets RETAIL_ETL_ENV: setting it here first restores it after the test.
    monkeypatch.setenv("RETAIL_ETL_ENV", "dev")
    urls = {}
    for env in ("dev", "prod"):
        urls[env] = f"postgresql+psycopg2://etl@{env}-db.internal:5432/retail_us_east"
        monkeypatch.setenv("RETAIL_ETL_SOURCE_URL_US_EAST", urls[env])
        monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", f"http://127.0.0.1:9/{env}-hook")
        assert main(["blocks", "register", *(["--env", env] if env != "dev" else [])]) == 0
    out = capsys.readouterr().out
    assert f"saved SqlAlchemyConnector {prefix}us-east\n" in out  # dev: today's name
    assert f"saved SqlAlchemyConnector prod-{prefix}us-east\n" in out
    assert f"saved SlackWebhook {prefix}slack\n" in out
    assert f"saved SlackWebhook prod-{prefix}slack\n" in out

    # Each environment reads its own blocks, the other's untouched by the second register.
    monkeypatch.delenv("RETAIL_ETL_SOURCE_URL_US_EAST")
    for env in ("dev", "prod"):
        monkeypatch.setenv("RETAIL_ETL_ENV", env)
        settings = get_settings(fresh=True)
        url, where = load_source_url("us_east", settings)
        assert url.get_secret_value() == urls[env]
        assert where == f"block {settings.source_block_name('us_east')}"
        hook = SlackWebhook.load(settings.slack_block).url.get_secret_value()
        assert hook == f"http://127.0.0.1:9/{env}-hook"


def test_blocks_register_refuses_an_unknown_environment(monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("RETAIL_ETL_ENV", "dev")  # the CLI's --env sets it: restored after
    assert main(["blocks", "register", "--env", "production"]) == 2
    err = capsys.readouterr().err
    assert "RETAIL_ETL_ENV must be one of dev, staging, prod, got 'production'" in err


def _deployments() -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_has_its_deployments_on_its_own_pool(env):
    deployments = _deployments()
    prefix = "" if env == "dev" else f"{env}-"
    pool = "retail-etl-pool" if env == "dev" else f"retail-etl-{env}-pool"
    for name in ("daily", "backfill", "audit", "quality-report"):
        deployment = deployments[prefix + name]
        assert deployment["work_pool"]["name"] == pool, deployment["name"]
        assert deployment["work_pool"]["job_variables"]["env"]["RETAIL_ETL_ENV"] == env
        for schedule in deployment.get("schedules") or []:
            # Only prod runs by itself; dev and staging are run by hand or resumed.
            assert schedule["active"] is (env == "prod"), deployment["name"]


def test_the_report_runs_monday_morning_in_the_business_timezone():
    deployment = _deployments()["prod-quality-report"]
    assert deployment["entrypoint"] == "flows/report.py:retail_sales_quality_report"
    (schedule,) = deployment["schedules"]
    assert schedule["cron"].split()[4] == "1"  # Monday
    assert int(schedule["cron"].split()[1]) < 12  # morning
    assert schedule["timezone"] == "UTC"  # RETAIL_ETL_TIMEZONE's default, the business zone
    daily = _deployments()["prod-daily"]["schedules"][0]

    def at(cron: str) -> tuple[int, int]:
        minute, hour = cron.split()[:2]
        return int(hour), int(minute)

    assert at(schedule["cron"]) > at(daily["cron"])  # after the daily load of Sunday


def test_artifact_keys_carry_the_environment(prefect_api, monkeypatch, tmp_path):
    from flows.report import retail_sales_quality_report
    from retail_etl.run import RunContext, RunSummary

    day = dt.date(2024, 1, 15)
    ctx = RunContext(day, ("us_east",), "20240115_0123456789ab", "local", tmp_path)
    summary = RunSummary.start(ctx, artifact_prefix="prod-")
    summary.stage_seconds["extract"] = 1.0
    assert [k for k, _ in summary.detail_artifact_keys(alerted=True)] == [
        "prod-extract-2024-01-15",
        "prod-alert-2024-01-15",
    ]

    monkeypatch.setenv("RETAIL_ETL_ENV", "staging")
    monkeypatch.setenv("RETAIL_ETL_REGIONS", "us_east")
    monkeypatch.setenv("RETAIL_ETL_DUCKDB_PATH", str(tmp_path / "wh.duckdb"))
    monkeypatch.setenv("RETAIL_ETL_STAGING_DIR", str(tmp_path / "staging"))
    state = retail_sales_quality_report(
        start_date=day, end_date=day, notify=False, return_state=True
    )
    assert state.is_completed(), state.message
    assert set(flow_run_artifacts(state.state_details.flow_run_id)) == {
        "staging-quality-report-2024-01-15-2024-01-15"
    }
    assert "1 region-day(s) missing" in (state.message or "")
