"""The alert message (pure), sending it through the Slack block, and the ``alert`` subflow."""

from __future__ import annotations

import logging
import uuid
from datetime import date

import pytest

from retail_etl.alerts import (
    AlertMessage,
    build_alert_message,
    rerun_commands,
    resume_commands,
)
from retail_etl.quality import CheckResult, QualityReport
from retail_etl.records import RegionRecord
from retail_etl.redact import scrub_secrets
from retail_etl.run import RunSummary
from tests.plumbing import free_port

DAY = date(2024, 1, 15)
BATCH = "20240115_0123456789ab"
FLOW_RUN = "6f1c1d9e-1b7a-4c55-9d0e-3a2b1c0d9e8f"
REGIONS = ["us_east", "us_west", "europe", "apac"]


def _summary(**region_updates: dict[str, object]) -> RunSummary:
    """Every region loaded (1,000 extracted, 990 accepted, 10 rejected) unless updated."""
    summary = RunSummary(
        run_date=DAY,
        batch_id=BATCH,
        flow_run_id=FLOW_RUN,
        regions={r: RegionRecord(r) for r in REGIONS},
        gate_verdict="pass",
        warehouse="duckdb data/warehouse.duckdb",
    )
    for outcome in summary.regions.values():
        outcome.status = "loaded"
        outcome.rows_extracted, outcome.rows_accepted, outcome.rows_rejected = 1000, 990, 10
        outcome.rows_inserted, outcome.rows_updated = 980, 10
    for region, updates in region_updates.items():
        for key, value in updates.items():
            setattr(summary.regions[region], key, value)
    return summary


def _gate_failure() -> tuple[RunSummary, QualityReport]:
    summary = _summary(
        apac={
            "status": "gate_failed",
            "rows_accepted": 880,
            "rows_rejected": 120,
            "rows_inserted": 0,
            "rows_updated": 0,
        },
        us_east={"status": "gate_failed", "rows_inserted": 0, "rows_updated": 0},
        us_west={"status": "gate_failed", "rows_inserted": 0, "rows_updated": 0},
        europe={"status": "gate_failed", "rows_inserted": 0, "rows_updated": 0},
    )
    summary.gate_verdict = "fail"
    summary.failing_checks = ["reject_rate", "min_rows_batch"]
    report = QualityReport(
        DAY,
        BATCH,
        [
            CheckResult("min_rows_region", "apac", 880.0, 100.0, "pass", "880 accepted rows"),
            CheckResult("reject_rate", "apac", 0.12, 0.05, "fail", "120 of 1,000 rows rejected"),
            CheckResult("history_volume", "us_east", 0.35, 0.3, "warn", "35% above normal"),
            CheckResult("min_rows_batch", "*", 50.0, 100.0, "fail", "50 accepted rows"),
        ],
    )
    return summary, report


# --- the message --------------------------------------------------------------------------------


def test_gate_failure_names_each_failing_check_with_measured_value_and_threshold():
    summary, report = _gate_failure()

    message = build_alert_message(summary, report)

    assert "FAILED" in message.title and "quality gate failed" in message.title
    assert "2024-01-15" in message.title
    lines = message.text.splitlines()
    reject = next(line for line in lines if "`reject_rate`" in line)
    assert "(apac)" in reject and "measured 12.00% vs threshold 5.00%" in reject
    assert "120 of 1,000 rows rejected" in reject
    batch = next(line for line in lines if "`min_rows_batch`" in line)
    assert "(batch)" in batch and "measured 50 vs threshold 100" in batch
    # Passing and warning checks are not failures.
    assert "min_rows_region" not in message.text and "history_volume" not in message.text
    assert "*Loaded*: nothing" in message.text
    assert "apac (quality gate failed)" in message.text


def test_gate_failure_without_report_still_names_the_checks():
    summary, _report = _gate_failure()

    message = build_alert_message(summary)

    assert "`reject_rate`" in message.text and "`min_rows_batch`" in message.text


def test_region_outage_names_region_and_error_and_what_was_loaded():
    error = (
        "ExtractionError: region europe, 2024-01-15, table sales: cannot reach the source "
        'database: connection to server at "10.0.0.7", port 5432 failed: timeout '
        "(after 3 attempt(s))"
    )
    summary = _summary(
        europe={
            "status": "extract_failed",
            "error": error,
            "rows_extracted": 0,
            "rows_accepted": 0,
            "rows_rejected": 0,
            "rows_inserted": 0,
            "rows_updated": 0,
        }
    )

    message = build_alert_message(
        summary, flow_run_url=f"http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN}"
    )

    assert "extraction failed" in message.title and "3/4 region(s) loaded" in message.title
    failure = next(line for line in message.text.splitlines() if "Extraction failed" in line)
    assert "`europe`" in failure
    assert 'connection to server at "10.0.0.7", port 5432 failed: timeout' in failure
    assert "(after 3 attempt(s))" in failure
    assert f"<http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN}|{FLOW_RUN}>" in message.text
    assert f"`{BATCH}`" in message.text
    loaded = next(line for line in message.text.splitlines() if "*Loaded*" in line)
    assert "us_east (980 new, 10 updated)" in loaded and "europe" not in loaded
    assert "*Not loaded*: europe (extraction failed)" in message.text
    # Row counts per region, in a fixed-width table.
    row = next(line for line in message.text.splitlines() if line.startswith("us_west "))
    assert row.split() == ["us_west", "loaded", "1,000", "990", "10", "0", "990", "0"]
    row = next(line for line in message.text.splitlines() if line.startswith("europe "))
    assert row.split() == ["europe", "extract_failed", "0", "0", "0", "0", "0", "0"]


def test_rerun_commands_name_the_date_and_only_the_regions_not_loaded():
    summary = _summary(
        europe={"status": "extract_failed", "error": "down"},
        apac={"status": "load_failed", "error": "MERGE failed"},
    )

    message = build_alert_message(summary)

    assert rerun_commands(summary) == [
        "retail-etl run --date 2024-01-15 --regions europe,apac",
        "prefect deployment run 'retail-sales-etl/daily' -p run_date=2024-01-15 "
        """-p 'regions=["europe","apac"]'""",
    ]
    assert "`retail-etl run --date 2024-01-15 --regions europe,apac`" in message.text
    assert "prefect deployment run 'retail-sales-etl/daily' -p run_date=2024-01-15" in message.text
    assert "*Load failed* for `apac`: MERGE failed" in message.text


def test_rerun_of_every_region_uses_the_plain_deployment_command():
    summary, _report = _gate_failure()

    assert rerun_commands(summary)[1] == (
        "prefect deployment run 'retail-sales-etl/daily' -p run_date=2024-01-15"
    )
    assert rerun_commands(summary)[0] == (
        "retail-etl run --date 2024-01-15 --regions us_east,us_west,europe,apac"
    )


def test_rerun_and_resume_commands_name_the_environments_deployments():
    summary = _summary(apac={"status": "load_failed", "error": "MERGE failed"})
    summary.artifact_prefix = "prod-"

    assert rerun_commands(summary)[1].startswith(
        "prefect deployment run 'retail-sales-etl/prod-daily' -p run_date=2024-01-15"
    )
    assert resume_commands(summary)[1] == (
        f"prefect deployment run 'retail-sales-resume/prod-resume' -p batch_id={summary.batch_id}"
    )


def test_transform_failure_is_named_and_the_region_not_loaded():
    summary = _summary(
        us_west={
            "status": "transform_failed",
            "error": "TransformError: region us_west: column unit_price cannot be cast",
            "rows_inserted": 0,
            "rows_updated": 0,
        }
    )

    message = build_alert_message(summary)

    assert "transform failed" in message.title
    assert (
        "*Transform failed* for `us_west`: TransformError: region us_west: column unit_price "
        "cannot be cast" in message.text
    )
    assert "us_west (transform failed)" in message.text
    assert "--regions us_west" in message.text


def test_verification_failures_are_listed():
    summary = _summary(us_east={"status": "verify_failed", "error": "ledger says 990, fact 989"})
    summary.verification_failures = [
        "us_east: sales_fact holds 989 rows for 2024-01-15, ledger 990"
    ]

    message = build_alert_message(summary)

    assert "verification failed" in message.title
    assert "*Post-load verification failed*" in message.text
    assert "us_east: sales_fact holds 989 rows for 2024-01-15, ledger 990" in message.text
    assert "`us_east`: ledger says 990, fact 989" in message.text
    assert "us_east (980 new, 10 updated, verification failed)" in message.text
    assert "--regions us_east" in message.text


def test_no_secrets_in_the_message():
    leaky = (
        "OperationalError: could not connect to "
        "postgresql+psycopg2://etl_user:Sup3r-S3cret@db.internal:5432/sales_eu; "
        "dsn: host=db.internal user=etl password=An0ther-S3cret dbname=sales"
    )
    summary = _summary(europe={"status": "extract_failed", "error": leaky})
    summary.verification_failures = ["warehouse snowflake://loader:V3ry-S3cret@acct/db unreachable"]

    message = build_alert_message(summary)

    for text in (message.title, message.text, message.markdown, message.slack_text()):
        for secret in ("Sup3r-S3cret", "An0ther-S3cret", "V3ry-S3cret"):
            assert secret not in text
    assert "postgresql+psycopg2://etl_user:***@db.internal:5432/sales_eu" in message.text
    assert "password=***" in message.text
    assert "snowflake://loader:***@acct/db" in message.text


def test_scrub_secrets_keeps_urls_without_credentials():
    assert scrub_secrets("https://hooks.example/x and host=db port=5432") == (
        "https://hooks.example/x and host=db port=5432"
    )
    assert scrub_secrets("s3://user:pw@bucket/key, token='abc'") == (
        "s3://user:***@bucket/key, token='***'"
    )


def test_slack_control_characters_are_escaped():
    summary = _summary(europe={"status": "extract_failed", "error": "bad <object> & <@U123>"})

    message = build_alert_message(summary)

    assert "bad &lt;object&gt; &amp; &lt;@U123&gt;" in message.text


def test_markdown_variant_carries_the_same_facts():
    summary, report = _gate_failure()

    markdown = build_alert_message(summary, report).markdown

    assert markdown.startswith("# retail-sales-etl 2024-01-15 FAILED")
    assert "- **Quality gate failed** (2 failing check(s)):" in markdown
    assert "measured 12.00% vs threshold 5.00%" in markdown
    assert "`retail-etl run --date 2024-01-15 --regions us_east,us_west,europe,apac`" in markdown


def test_an_alert_is_needed_only_when_something_failed():
    assert _summary().needs_alert is False
    assert _summary(europe={"status": "extract_failed", "error": "x"}).needs_alert is True
    assert _gate_failure()[0].needs_alert is True
    verified = _summary()
    verified.verification_failures = ["counts differ"]
    assert verified.needs_alert is True
    assert _summary(apac={"status": "load_failed", "error": "x"}).needs_alert is True
    warned = _summary()
    warned.schema_warnings = ["us_east: source schema changed (fingerprint f): new column x (text)"]
    assert warned.needs_alert is True


def test_schema_change_warning_is_its_own_section_of_a_successful_run():
    summary = _summary()
    summary.schema_warnings = [
        "us_east: source schema changed (fingerprint 0123abcd): new column loyalty_tier (text)"
    ]

    message = build_alert_message(summary)

    assert message.title == (
        "retail-sales-etl 2024-01-15: OK, 4/4 region(s) loaded, 1 source schema change(s)"
    )
    assert "What failed" not in message.text and "Rerun" not in message.text
    lines = message.text.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("*Schema changes*")))
    assert lines[header + 1] == (
        "• us_east: source schema changed (fingerprint 0123abcd): new column loyalty_tier (text)"
    )
    assert "**Schema changes**" in message.markdown
    assert summary.outcome()[0] is True  # a warning, not a failure


def test_long_errors_are_shortened():
    summary = _summary(europe={"status": "extract_failed", "error": "x" * 5000})

    message = build_alert_message(summary)

    line = next(line for line in message.text.splitlines() if "Extraction failed" in line)
    assert len(line) < 500 and line.endswith("…")


# --- sending through the Slack block ------------------------------------------------------------


@pytest.fixture
def slack_settings(monkeypatch, slack_receiver):
    """A uniquely named Slack block pointing at the loopback receiver, registered."""
    from blocks.notifications import register_slack_block
    from retail_etl.settings import get_settings, load_registration_settings

    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", f"test-slack-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", slack_receiver.url)
    settings = get_settings(fresh=True)
    assert register_slack_block(settings, load_registration_settings()) == settings.slack_block
    return settings


def test_send_alert_posts_one_message_naming_the_failure(
    prefect_api, slack_settings, slack_receiver
):
    from blocks.notifications import send_alert

    summary, report = _gate_failure()
    message = build_alert_message(summary, report)

    assert send_alert(message, slack_settings) is True

    assert len(slack_receiver.bodies) == 1
    text = slack_receiver.texts[0]
    assert text == message.slack_text()
    assert "`reject_rate` (apac): measured 12.00% vs threshold 5.00%" in text


def test_send_alert_returns_false_and_logs_when_slack_is_down(
    prefect_api, slack_settings, slack_receiver, caplog
):
    from blocks.notifications import send_alert

    slack_receiver.close()
    summary = _summary(europe={"status": "extract_failed", "error": "down"})

    with caplog.at_level(logging.WARNING, logger="blocks.notifications"):
        sent = send_alert(build_alert_message(summary), slack_settings)

    assert sent is False
    assert "Alert not sent" in caplog.text and "unreachable" in caplog.text
    assert "retail-sales-etl 2024-01-15 FAILED" in caplog.text
    assert "webhook-secret" not in caplog.text and slack_receiver.url not in caplog.text


def test_send_alert_returns_false_when_nothing_listens(prefect_api, monkeypatch, caplog):
    from blocks.notifications import register_slack_block, send_alert
    from retail_etl.settings import get_settings, load_registration_settings

    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", f"test-slack-{uuid.uuid4().hex[:10]}")
    url = f"http://127.0.0.1:{free_port()}/services/T/B/webhook-secret-nobody"
    monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", url)
    settings = get_settings(fresh=True)
    register_slack_block(settings, load_registration_settings())

    with caplog.at_level(logging.WARNING, logger="blocks.notifications"):
        assert send_alert(AlertMessage("t", "body"), settings) is False

    assert "Alert not sent" in caplog.text and "webhook-secret" not in caplog.text


def test_send_alert_returns_false_on_http_error(
    prefect_api, slack_settings, slack_receiver, caplog
):
    from blocks.notifications import send_alert

    slack_receiver.status = 500

    with caplog.at_level(logging.WARNING, logger="blocks.notifications"):
        assert send_alert(AlertMessage("t", "body"), slack_settings) is False

    assert len(slack_receiver.bodies) == 1
    assert "HTTP 500" in caplog.text


def test_send_alert_returns_false_when_the_block_is_missing(prefect_api, monkeypatch, caplog):
    from blocks.notifications import send_alert
    from retail_etl.settings import get_settings

    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", f"test-missing-{uuid.uuid4().hex[:10]}")
    settings = get_settings(fresh=True)

    with caplog.at_level(logging.WARNING, logger="blocks.notifications"):
        assert send_alert(AlertMessage("t", "body"), settings) is False

    assert f"Slack block {settings.slack_block!r} does not exist" in caplog.text


def test_blocks_register_saves_the_slack_block_without_printing_the_url(
    prefect_api, monkeypatch, slack_receiver, capsys
):
    from prefect_slack import SlackWebhook

    from cli.main import main

    name = f"test-slack-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("RETAIL_ETL_REGIONS", "europe")
    monkeypatch.setenv("RETAIL_ETL_SOURCE_BLOCK_PREFIX", f"test-{uuid.uuid4().hex[:8]}-")
    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", name)
    monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", slack_receiver.url)

    assert main(["blocks", "register"]) == 0

    out = capsys.readouterr().out
    assert f"saved SlackWebhook {name}" in out
    assert "webhook-secret" not in out
    block = SlackWebhook.load(name)
    assert block.url.get_secret_value() == slack_receiver.url
    assert "webhook-secret" not in repr(block)


# --- the alert subflow --------------------------------------------------------------------------


def test_alert_flow_logs_publishes_an_artifact_and_posts(
    prefect_api, slack_settings, slack_receiver
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.alert import alert

    summary, report = _gate_failure()

    state = alert(summary, report, return_state=True)

    assert state.is_completed() and state.result() is True
    assert len(slack_receiver.bodies) == 1
    assert "`reject_rate` (apac): measured 12.00% vs threshold 5.00%" in slack_receiver.texts[0]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["alert-2024-01-15"])),
        )
    markdown = next(a.data for a in artifacts if a.flow_run_id == state.state_details.flow_run_id)
    assert "measured 12.00% vs threshold 5.00%" in markdown
    assert "## Quality gate: FAIL" in markdown  # the full report follows the alert


def test_alert_flow_completes_when_slack_is_down(prefect_api, slack_settings, slack_receiver):
    from flows.alert import alert

    slack_receiver.close()
    summary = _summary(europe={"status": "extract_failed", "error": "down"})

    state = alert(summary, return_state=True)

    assert state.is_completed() and state.result() is False


# --- the failure automation (its definition; the server test runs it) ---------------------------


def test_failure_automation_watches_both_flows_for_failed_and_crashed():
    from cli.automations import FAILURE_AUTOMATION, failure_automation

    block_id = uuid.uuid4()
    automation = failure_automation(block_id)

    assert automation.name == FAILURE_AUTOMATION
    trigger = automation.trigger
    assert trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    related = trigger.match_related
    assert related["prefect.resource.role"] == ["flow"]
    assert related["prefect.resource.name"] == ["retail-sales-etl", "retail-sales-backfill"]
    (action,) = automation.actions
    assert action.type == "send-notification" and action.block_document_id == block_id


def test_failure_automation_templates_are_valid_for_the_server():
    from prefect.server.events.actions import SendNotification

    from cli.automations import FAILURE_BODY, FAILURE_SUBJECT

    SendNotification(block_document_id=uuid.uuid4(), subject=FAILURE_SUBJECT, body=FAILURE_BODY)


def test_automations_install_refuses_the_ephemeral_api(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cli.main import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["automations", "install"]) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err


def test_a_deferred_region_is_no_failure_and_a_failed_lookback_pair_is_alerted():
    deferred = _summary(
        us_west={
            "status": "deferred",
            "error": "business day 2024-01-15 of region us_west (America/Los_Angeles) is not "
            "closed before 2024-01-16 09:00 UTC (end of day + grace): deferred",
            "rows_extracted": 0,
            "rows_accepted": 0,
            "rows_rejected": 0,
            "rows_inserted": 0,
            "rows_updated": 0,
        }
    )
    ok, message = deferred.outcome()
    assert ok and deferred.succeeded and not deferred.needs_alert
    assert message.endswith("; deferred (day not closed): us_west")

    deferred.lookback = {"2024-01-13 europe": "gate_failed", "2024-01-14 apac": "loaded"}
    deferred.lookback_reasons = {
        "2024-01-13 europe": "source changed since its load",
        "2024-01-14 apac": "latest ledger status deferred",
    }
    ok, message = deferred.outcome()
    assert not ok and deferred.needs_alert
    assert "lookback reprocessing failed for 2024-01-13 europe: gate_failed" in message
    alert = build_alert_message(deferred)
    assert alert.title == (
        "retail-sales-etl 2024-01-15 FAILED (lookback reprocessing failed): 3/4 region(s) loaded"
    )
    assert "`2024-01-13 europe`: gate_failed (source changed since its load)" in alert.text
    assert "us_west (business day not closed yet; a later run's lookback loads it)" in alert.text
    assert "2024-01-14 apac" not in alert.text  # loaded: nothing to report
    assert "`retail-etl backfill --start 2024-01-13 --end 2024-01-13 --changed-only`" in alert.text
    assert "Rerun" not in alert.text  # us_west is not due yet: nothing of today to rerun


def test_retracted_rows_are_counted_in_the_alert():
    summary = _summary(
        us_east={"rows_extracted": 1050, "rows_retracted": 50, "rows_deleted": 3},
        europe={"status": "load_failed", "error": "WarehouseLoadError: rolled back"},
    )
    message = build_alert_message(summary, flow_run_url=None)
    loaded = next(line for line in message.text.splitlines() if "*Loaded*" in line)
    assert "us_east (980 new, 10 updated, 3 retracted)" in loaded
    assert "us_west (980 new, 10 updated)" in loaded
    header = next(line for line in message.text.splitlines() if line.startswith("region "))
    assert header.split() == [
        "region", "status", "extracted", "accepted", "rejected", "retracted", "loaded", "removed"
    ]  # fmt: skip
    row = next(line for line in message.text.splitlines() if line.startswith("us_east "))
    assert row.split() == ["us_east", "loaded", "1,050", "990", "10", "50", "990", "3"]


def test_the_automation_skips_runs_that_alerted_and_only_those():
    from prefect.server.events.schemas.events import Resource

    from cli.automations import failure_automation
    from retail_etl.alerts import ALERTED_MARK, alert_note

    match = failure_automation(uuid.uuid4()).trigger.match
    assert match["prefect.state-message"] == [f"!*{ALERTED_MARK}*"]

    def fires(message: str) -> bool:
        from prefect.server.events.schemas.events import ResourceSpecification

        resource = Resource.model_validate(
            {"prefect.resource.id": "prefect.flow-run.x", "prefect.state-message": message}
        )
        return ResourceSpecification.model_validate(dict(match.items())).matches(resource)

    failed = "2024-01-15: extraction failed for europe (...); loaded: us_east"
    assert not fires(failed + alert_note(sent=True))
    assert not fires(failed + alert_note(sent=False, by_backfill=True))
    assert fires(failed + alert_note(sent=False))  # Slack was down: the automation speaks
    assert fires("Flow run infrastructure exited with non-zero status code -9.")
    assert fires("")


def test_backfill_problems_are_grouped_with_date_ranges():
    from retail_etl.alerts import build_backfill_alert
    from retail_etl.backfill import BackfillResult, backfill_outcome, date_spans

    days = [date(2024, 1, d) for d in (2, 3, 4, 9, 20)]
    assert date_spans(days) == "2024-01-02..01-04, 2024-01-09, 2024-01-20"
    assert date_spans(days, limit=1) == "2024-01-02..01-04 and 2 more range(s)"

    def day(d: int, **statuses: str) -> BackfillResult:
        summary = _summary()
        summary.run_date = date(2024, 1, d)
        for region, status in statuses.items():
            outcome = summary.regions[region]
            outcome.status = status  # type: ignore[assignment]
            if status == "gate_failed":
                outcome.rows_extracted = outcome.rows_accepted = 0
            else:
                outcome.error = f"region {region}: connection refused"
        result = BackfillResult(summary.run_date, tuple(REGIONS), ())
        result.summary = summary
        result.statuses = {r: o.status for r, o in summary.regions.items()}
        return result

    empty = dict.fromkeys(REGIONS, "gate_failed")
    results = [day(1), day(2, **empty), day(3, **empty), day(4, europe="extract_failed")]
    ok, message = backfill_outcome(date(2024, 1, 1), date(2024, 1, 4), results)
    assert not ok
    assert message == (
        "backfill 2024-01-01..01-04: 9 of 16 (region, date) pair(s) not loaded on 3 day(s) "
        "(2024-01-02..01-04); the source holds 0 rows: 8; extraction failed: 1; 7 loaded"
    )
    text = build_backfill_alert(date(2024, 1, 1), date(2024, 1, 4), results).slack_text()
    assert "*the source holds 0 rows* (8 pair(s)):" in text
    assert "`us_east`, `us_west`, `europe`, `apac`: 2024-01-02..01-03" in text
    assert "*extraction failed* (1 pair(s)):" in text and "`europe`: 2024-01-04" in text
    assert "e.g. 2024-01-04 europe: region europe: connection refused" in text
    assert "*Loaded*: 7 pair(s), 6,930 accepted rows" in text
    command = "-p start_date=2024-01-01 -p end_date=2024-01-04 -p missing_only=true`"
    assert f"`prefect deployment run 'retail-sales-backfill/backfill' {command}" in text
    prod = build_backfill_alert(
        date(2024, 1, 1), date(2024, 1, 4), results, env_prefix="prod-"
    ).slack_text()  # the environment's own deployment, as prefect.yaml names it
    assert f"`prefect deployment run 'retail-sales-backfill/prod-backfill' {command}" in prod


def test_fifty_regions_failing_alike_read_as_one_line_with_examples():
    """At 50 regions failing in one stage, the alert names them in one line with a few
    example errors, and the run's state message quotes a few errors and names the rest;
    at four regions each region keeps its own line."""
    regions = [*REGIONS, *(f"region_{i:02d}" for i in range(5, 51))]
    summary = RunSummary(
        run_date=DAY,
        batch_id=BATCH,
        flow_run_id=FLOW_RUN,
        regions={r: RegionRecord(r) for r in regions},
    )
    for outcome in summary.regions.values():
        outcome.status = "extract_failed"
        outcome.error = f"SourceBlockError: region {outcome.region}: source block not found"
    text = build_alert_message(summary).slack_text()
    lines = text.splitlines()
    (named,) = [line for line in lines if "*Extraction failed*" in line]
    assert named.startswith("• *Extraction failed* for 50 regions: `us_east`, `us_west`, ")
    assert named.endswith("`region_49`, `region_50`")
    examples = [line for line in lines if "source block not found" in line]
    assert len(examples) == 5 and "`us_east`: SourceBlockError: region us_east" in examples[0]
    assert "… and 45 more (each region's error is in the run's summary artifact)" in text
    assert len(text) < 10_000  # one line per region of the rows table, not of errors

    ok, message = summary.outcome()
    assert not ok
    assert message.count("source block not found") == 5
    assert "region_05 (SourceBlockError: region region_05: source block not found)" in message
    assert "; and 45 more region(s): region_06, region_07," in message
    assert "region_49, region_50; nothing loaded" in message

    few = _summary(europe={"status": "extract_failed", "error": "connection refused"})
    assert (
        "• *Extraction failed* for `europe`: connection refused"
        in build_alert_message(few).slack_text()
    )
