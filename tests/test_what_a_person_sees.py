"""What a person sees: the parent run's name and summary artifact, the state message, CLI usage
errors (exit 2, no flow run), live progress on a terminal and plain lines elsewhere."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from retail_etl.progress import ProgressDisplay, finished, listening, report
from retail_etl.records import RegionRecord
from retail_etl.run import RunSummary, timing_lines
from tests.pipeline import flow_run_artifacts, run_day

DAY = date(2024, 1, 15)
BIN = Path(sys.executable).parent


def _flow_runs_since(moment: datetime):  # type: ignore[no-untyped-def]
    """The flow runs expected to start between ``moment`` and now: every one created since,
    not a capped page of all (the session's server holds the runs of every test before)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=moment, before_=datetime.now(UTC)
                )
            )
        )


def test_the_parent_run_tells_the_story(etl_env, etl_slack, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    etl_env.seed(rows=2_000)
    etl_env.point_source("europe", "postgresql+psycopg2://postgres@127.0.0.1:1/unreachable")
    monkeypatch.setenv("RETAIL_ETL_RETRIES", "0")

    state, summary = run_day(DAY)

    parent_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(parent_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )
    assert parent.name == "retail-sales-etl 2024-01-15"
    assert sorted(c.name for c in children) == [
        "alert 2024-01-15",
        "load 2024-01-15",
        "transform 2024-01-15",
        "validate 2024-01-15",
    ]
    # The state message is the one-line outcome, saying it was alerted.
    assert "\n" not in state.message
    assert state.message.startswith(
        "2024-01-15: extraction failed for europe (ExtractionError: region europe, 2024-01-15"
    )
    assert state.message.endswith("; loaded: us_east, us_west, apac; alerted on Slack")
    assert len(etl_slack.texts) == 1

    artifacts = flow_run_artifacts(parent_id)
    assert set(artifacts) == {"summary-2024-01-15", "extract-2024-01-15"}
    md = artifacts["summary-2024-01-15"].data
    headline = "retail-sales-etl 2024-01-15: FAILED, 3/4 region(s) loaded"
    assert artifacts["summary-2024-01-15"].description == headline
    lines = md.splitlines()
    assert lines[0] == f"## {headline}"
    assert lines[2] == state.message.replace("|", "\\|")
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0] == (
        "| region | status | extracted | accepted | rejected | retracted | inserted | updated "
        "| removed |"
    )
    # failures first, then the others in run order, with thousands separators
    assert [r.split(" | ")[0].lstrip("| ") for r in rows[2:]] == [
        "europe",
        "us_east",
        "us_west",
        "apac",
        "**all**",
    ]
    assert rows[2] == "| europe | extract_failed | 0 | 0 | 0 | 0 | 0 | 0 | 0 |"
    assert "- europe (extract_failed): ExtractionError: region europe, 2024-01-15" in md
    us_east = summary.regions["us_east"]
    assert rows[3] == (
        f"| us_east | loaded | {us_east.rows_extracted:,} | {us_east.rows_accepted:,} | "
        f"{us_east.rows_rejected:,} | {us_east.rows_retracted:,} | {us_east.rows_inserted:,} | "
        f"{us_east.rows_updated:,} | {us_east.rows_deleted:,} |"
    )
    assert "," in f"{us_east.rows_extracted:,}"  # 2,000 seeded rows: separators shown
    for key, where in (
        ("extract-2024-01-15", "this run"),
        ("transform-2024-01-15", "subflow transform"),
        ("quality-2024-01-15", "subflow validate"),
        ("load-2024-01-15", "subflow load"),
        ("alert-2024-01-15", "subflow alert"),
    ):
        assert f"- `{key}` ({where})" in md
    assert re.search(r"- load \d+\.\d\d s = stage \d+\.\d\d s \+ copy \+ merge", md)

    # The extract table: the error comes before the wide source columns, counts formatted.
    table = artifacts["extract-2024-01-15"].data
    extract_rows = json.loads(table) if isinstance(table, str) else table
    by_region = {row["region"]: row for row in extract_rows}
    columns = list(by_region["us_east"])
    assert columns[:6] == ["region", "status", "rows", "size", "seconds", "error"]
    assert columns[-1] == "source_columns"
    assert by_region["us_east"]["rows"] == f"{us_east.rows_extracted:,}"
    assert "region europe, 2024-01-15" in by_region["europe"]["error"]


def test_cli_usage_errors_exit_2_without_a_flow_run(prefect_api, etl_env, capsys):
    from cli.main import main

    before = datetime.now(UTC)
    cases = [
        (["run", "--regions", "us_east,mars"], "unknown region(s) mars"),
        (
            ["backfill", "--start", "2024-01-31", "--end", "2024-01-01"],
            "--end 2024-01-01 is before --start 2024-01-31",
        ),
        (
            ["backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--regions", "Europe"],
            "unknown region(s) Europe",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"retail-etl {argv[0]}: error: {message}" in err
        assert "Traceback" not in err and err.startswith(f"usage: retail-etl {argv[0]}")
    # a date argparse cannot read, and settings that do not parse
    with pytest.raises(SystemExit) as exited:
        main(["run", "--date", "2024-13-45"])
    assert exited.value.code == 2
    assert "not a date (YYYY-MM-DD): '2024-13-45'" in capsys.readouterr().err
    os.environ["RETAIL_ETL_MAX_REJECT_RATE"] = "five percent"
    try:
        assert main(["run", "--date", "2024-01-15"]) == 2
    finally:
        del os.environ["RETAIL_ETL_MAX_REJECT_RATE"]
    assert (
        "RETAIL_ETL_* settings: invalid configuration: max_reject_rate" in capsys.readouterr().err
    )
    assert _flow_runs_since(before) == []


def test_help_has_no_raw_markup(capsys):
    from cli.main import main

    for argv in (["--help"], ["run", "--help"], ["backfill", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and "usage: retail-etl" in out


def test_env_file_fills_settings_without_overriding_the_environment(tmp_path, monkeypatch):
    from cli.main import load_env_file

    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "# worker settings\nexport RETAIL_ETL_TEST_A=from-file\n"
        "RETAIL_ETL_TEST_B='quoted value'\nRETAIL_ETL_TEST_C=file\n"
    )
    monkeypatch.setenv("RETAIL_ETL_TEST_C", "environment")
    monkeypatch.delenv("RETAIL_ETL_TEST_A", raising=False)
    monkeypatch.delenv("RETAIL_ETL_TEST_B", raising=False)
    try:
        assert load_env_file(str(env_file)) == ["RETAIL_ETL_TEST_A", "RETAIL_ETL_TEST_B"]
        assert os.environ["RETAIL_ETL_TEST_A"] == "from-file"
        assert os.environ["RETAIL_ETL_TEST_B"] == "quoted value"
        assert os.environ["RETAIL_ETL_TEST_C"] == "environment"
    finally:
        os.environ.pop("RETAIL_ETL_TEST_A", None)
        os.environ.pop("RETAIL_ETL_TEST_B", None)


# --- progress ------------------------------------------------------------------------------------


def _loaded_summary() -> RunSummary:
    summary = RunSummary(
        DAY, "20240115_0123456789ab", "local", {"us_east": RegionRecord("us_east")}
    )
    outcome = summary.regions["us_east"]
    outcome.status, outcome.rows_inserted, outcome.rows_updated = "loaded", 1_234_567, 8
    return summary


def test_plain_progress_prints_one_line_per_stage_change():
    out = io.StringIO()
    display = ProgressDisplay(out)
    assert display.live is False  # a StringIO is not a terminal
    with display.running():
        report("us_east", "source", detail="block sales-source-us-east")
        report("us_east", "extracting", rows=0, split=0)
        report("us_east", "extracting", rows=250_000, split=0)  # rows only: no new line
        report("us_east", "extracting", rows=200_000, split=1)
        report("us_east", "extracted", detail="2.10 s")
        finished(_loaded_summary())
    report("us_east", "extracting", rows=1)  # after the run: nobody listens
    assert out.getvalue().splitlines() == [
        "us_east    source: block sales-source-us-east",
        "us_east    extracting     0 rows extracted",
        "us_east    extracted      450,000 rows extracted, 2.10 s",
        "us_east    loaded         450,000 rows extracted, 1,234,567 inserted, 8 updated",
    ]


def test_a_failing_listener_does_not_disturb_the_run():
    def broken(event):  # type: ignore[no-untyped-def]
        raise RuntimeError("display gone")

    with listening(broken):
        report("us_east", "extracting", rows=5)  # does not raise


def test_timing_lines_say_what_contains_what():
    lines = timing_lines(
        {
            "extract": 2.5,
            "transform": 2.0,
            "validate": 0.5,
            "load": 2.32,
            "stage": 0.04,
            "merge": 1.91,
            "verify": 0.3,
        }
    )
    assert lines == [
        "extract 2.50 s: every region at once",
        "transform 2.00 s: after the last extract landed (earlier regions were transformed "
        "during the extract)",
        "quality gate 0.50 s",
        "load 2.32 s = stage 0.04 s + copy + merge 1.91 s + verify 0.30 s (+ subflow overhead)",
    ]


def test_live_progress_on_a_terminal(etl_env, monkeypatch):
    """``retail-etl run`` on a pseudo-terminal draws the live table (rich), then the summary."""
    etl_env.seed(rows=1_500)
    # as a user has it: no API URL, and no start-up timeout of our own (the CLI sets one)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_API_URL")
        and k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    }
    env.update(COLUMNS="160", LINES="40", TERM="xterm-256color")
    primary, secondary = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "retail-etl"), "run", "--date", DAY.isoformat()],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(primary)
    print(f"retail-etl run on a pty took {time.monotonic() - started:.1f} s")
    output = b"".join(chunks).decode("utf-8", "replace")
    frames = ("┃", "┏", "┡", "└", "│", "╷", "╵")
    plain = "\n".join(line for line in output.splitlines() if not any(f in line for f in frames))
    assert proc.returncode == 0, plain[-4000:]
    assert "\x1b[" in output  # terminal control sequences: a live display, not plain lines
    for header in ("region", "stage", "rows extracted", "source"):
        assert header in output
    # the source of each region, never its URL (no API URL: sources from the environment)
    assert f"local default database {etl_env.prefix}us_east" in output
    assert "postgresql" not in output
    extracted = etl_env.warehouse(
        "SELECT sum(rows_extracted) FROM etl_load_ledger WHERE region = 'us_east'"
    )[0][0]
    assert f"{extracted:,}" in output and "loaded" in output
    assert "OK  2024-01-15: loaded 4 region(s)" in output
    assert "load " in output and " = stage " in output


def test_a_long_error_keeps_what_failed_and_its_cause_in_the_state_message():
    summary = RunSummary(
        DAY, "20240115_0123456789ab", "local", {"us_east": RegionRecord("us_east")}
    )
    outcome = summary.regions["us_east"]
    outcome.status = "load_failed"
    outcome.error = (
        "WarehouseLoadError: loading region 'us_east' for 2024-01-15 (batch 20240115_0123456789ab)"
        + " into sales_fact failed at step 'ledger'; rolled back" * 12
        + ", nothing merged: InvalidInputException: injected warehouse failure"
    )
    summary.regions["apac"] = RegionRecord("apac", "load_failed", outcome.error)
    ok, message = summary.outcome()
    assert not ok and len(message) < 700
    assert message.count("WarehouseLoadError") == 1  # both regions, one error
    assert "load failed for us_east, apac (WarehouseLoadError" in message
    assert "injected warehouse failure); nothing loaded" in message and " … " in message


@pytest.mark.parametrize("given", [None, "300"])
def test_the_cli_gives_the_ephemeral_api_time_to_start_unless_told(monkeypatch, given):
    """A fresh install's first ephemeral start outlasts Prefect's 20 s default on a small machine."""
    from cli.main import EPHEMERAL_STARTUP_TIMEOUT_SECONDS, main

    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    if given is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, given)
    # refused before any flow starts
    assert main(["backfill", "--start", "2024-01-20", "--end", "2024-01-10"]) == 2
    assert os.environ[name] == (given or EPHEMERAL_STARTUP_TIMEOUT_SECONDS)
