"""Quality gate: checks, thresholds, history and invariants on tiny parquet (no Prefect)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_etl import contract, transform
from retail_etl.quality import (
    CheckResult,
    QualityReport,
    QualityThresholds,
    evaluate_batch,
    history_check,
    invariant_checks,
)
from retail_etl.rules import AcceptedMeasures, measure_accepted
from retail_etl.settings import Settings
from retail_etl.transform import RegionTransformResult, transform_frame, transform_region
from tests.sources import sale

D = date(2024, 1, 15)  # a Monday
T0 = datetime(2024, 1, 15, 10, tzinfo=UTC)
DEFAULTS = QualityThresholds()


def extract(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows), schema=contract.contract_arrow_schema()), path)
    return path


def transformed(
    tmp_path: Path, region: str, rows: Sequence[dict[str, Any]]
) -> RegionTransformResult:
    f = extract(tmp_path / "extract" / f"region={region}" / "part-00000.parquet", rows)
    return transform_region(
        [f], region=region, business_date=D, batch_id="B1", flow_run_id="F1", out_dir=tmp_path
    )


def stats(
    region: str = "us_east",
    *,
    extracted: int = 1000,
    rejected: int = 0,
    null_counts: dict[str, int] | None = None,
) -> RegionTransformResult:
    """Transform statistics without files (their invariants measured clean)."""
    return RegionTransformResult(
        region=region,
        rows_extracted=extracted,
        rows_accepted=extracted - rejected,
        rows_rejected=rejected,
        reasons={"duplicate": rejected} if rejected else {},
        null_counts={c: 0 for c in contract.CRITICAL_COLUMNS} | (null_counts or {}),
        total_amount_extracted=Decimal(0),
        total_amount_accepted=Decimal(0),
        total_amount_rejected=Decimal(0),
        accepted_measures=AcceptedMeasures(rows=extracted - rejected),
    )


def evaluate(
    results: dict[str, RegionTransformResult],
    history: dict[str, list[tuple[date, int]]] | None = None,
    thresholds: QualityThresholds = DEFAULTS,
) -> QualityReport:
    return evaluate_batch(
        results, business_date=D, batch_id="B1", thresholds=thresholds, history=history or {}
    )


def check(report: QualityReport, name: str, region: str = "us_east") -> CheckResult:
    (found,) = [c for c in report.checks if c.name == name and c.region == region]
    return found


def weekly(rows: int, weeks: int = 4) -> list[tuple[date, int]]:
    """Same weekday as D over the last ``weeks`` weeks."""
    return [(D - timedelta(weeks=w), rows) for w in range(1, weeks + 1)]


# --- thresholds ---------------------------------------------------------------------------------


def test_thresholds_from_settings_use_the_settings_values() -> None:
    settings = Settings(min_rows_per_region=7, max_reject_rate=0.1, history_fail_mode="warn")
    t = QualityThresholds.from_settings(settings)
    assert (t.min_rows_per_region, t.max_reject_rate, t.history_fail_mode) == (7, 0.1, "warn")
    assert QualityThresholds.from_settings(Settings()) == QualityThresholds()


def test_inconsistent_history_thresholds_rejected() -> None:
    with pytest.raises(ValueError, match="history_warn_deviation"):
        QualityThresholds(history_warn_deviation=0.6, history_fail_deviation=0.5)


# --- per-region checks --------------------------------------------------------------------------


def test_clean_batch_passes(tmp_path: Path) -> None:
    results = {
        region: transformed(tmp_path, region, [sale(i) for i in range(1, 151)])
        for region in ("us_east", "europe")
    }
    report = evaluate(results, history={"us_east": weekly(150), "europe": weekly(140)})
    assert report.verdict == "pass"
    assert report.failing == []
    names = {c.name for c in report.checks}
    assert names == {
        "min_rows_region",
        "min_rows_batch",
        "reject_rate",
        "history_volume",
        "missing_from_source_share",
        "no_duplicate_keys",
        "no_rule_violations",
        "sale_date_is_business_date",
        *(f"null_share_{c}" for c in contract.CRITICAL_COLUMNS),
    }
    assert check(report, "min_rows_batch", "*").measured == 300
    assert check(report, "history_volume", "europe").status == "pass"
    assert "# Quality gate: PASS" in report.to_markdown()


def test_too_few_rows_fail_region_and_batch() -> None:
    report = evaluate({"us_east": stats(extracted=60), "europe": stats("europe", extracted=30)})
    region = check(report, "min_rows_region")
    assert (region.status, region.measured, region.threshold) == ("fail", 60, 100)
    assert check(report, "min_rows_batch", "*").status == "fail"
    assert report.verdict == "fail"
    thresholds = QualityThresholds(min_rows_per_region=50, min_rows_per_batch=80)
    relaxed = evaluate(
        {"us_east": stats(extracted=60), "europe": stats("europe", extracted=30)},
        thresholds=thresholds,
    )
    assert check(relaxed, "min_rows_region").status == "pass"
    assert check(relaxed, "min_rows_region", "europe").status == "fail"
    assert check(relaxed, "min_rows_batch", "*").status == "pass"


def test_null_share_above_threshold_fails() -> None:
    report = evaluate({"us_east": stats(null_counts={"customer_id": 100, "store_id": 50})})
    failing = check(report, "null_share_customer_id")
    assert (failing.status, failing.measured, failing.threshold) == ("fail", 0.1, 0.05)
    assert check(report, "null_share_store_id").status == "pass"  # exactly 5%: not above
    assert check(report, "null_share_sale_id").measured == 0.0


def test_reject_rate_above_threshold_fails() -> None:
    report = evaluate({"us_east": stats(rejected=60), "europe": stats("europe", rejected=50)})
    assert check(report, "reject_rate").status == "fail"
    assert check(report, "reject_rate").measured == pytest.approx(0.06)
    assert "duplicate: 60" in check(report, "reject_rate").detail
    assert check(report, "reject_rate", "europe").status == "pass"


def test_no_rows_extracted_skips_ratio_checks() -> None:
    report = evaluate({"us_east": stats(extracted=0)})
    assert check(report, "reject_rate").status == "skipped"
    assert check(report, "null_share_customer_id").status == "skipped"
    assert check(report, "min_rows_region").status == "fail"


# --- history ------------------------------------------------------------------------------------


def test_region_far_below_history_fails_or_warns_by_mode() -> None:
    failing = history_check("us_east", 400, weekly(1000), D, DEFAULTS)
    assert failing.status == "fail"
    assert failing.measured == pytest.approx(0.6)
    assert failing.threshold == 0.5
    assert "below baseline 1,000" in failing.detail
    warn_mode = QualityThresholds(history_fail_mode="warn")
    assert history_check("us_east", 400, weekly(1000), D, warn_mode).status == "warn"
    report = evaluate({"us_east": stats(extracted=400)}, history={"us_east": weekly(1000)})
    assert report.verdict == "fail"
    assert check(report, "history_volume").status == "fail"


def test_history_warn_band_and_pass() -> None:
    warned = history_check("us_east", 650, weekly(1000), D, DEFAULTS)
    assert (warned.status, warned.threshold) == ("warn", 0.3)
    assert history_check("us_east", 1250, weekly(1000), D, DEFAULTS).status == "pass"
    assert history_check("us_east", 1600, weekly(1000), D, DEFAULTS).status == "fail"  # above too


def test_no_history_is_skipped_with_reason() -> None:
    result = history_check("us_east", 500, [(D - timedelta(days=1), 500)], D, DEFAULTS)
    assert result.status == "skipped"
    assert result.detail.startswith("no history yet (1 points < 3)")
    report = evaluate({"us_east": stats()}, history={})
    assert check(report, "history_volume").status == "skipped"
    assert report.verdict == "pass"


def test_same_weekday_baseline_preferred_over_trailing_mean() -> None:
    # Mondays are big (1000), other days small (100): a Monday of 1000 is normal.
    history = weekly(1000) + [(D - timedelta(days=d), 100) for d in range(1, 28) if d % 7]
    assert history_check("us_east", 1000, history, D, DEFAULTS).status == "pass"
    # with too few Mondays, the trailing mean of all points is the baseline
    few = QualityThresholds(history_min_points=5)
    trailing = history_check("us_east", 1000, history, D, few)
    assert "trailing mean" in trailing.detail and trailing.status == "fail"


def test_history_ignores_points_outside_the_look_back_and_the_date_itself() -> None:
    history = [(D, 10), (D + timedelta(days=7), 10), (D - timedelta(days=60), 10), *weekly(1000)]
    assert history_check("us_east", 1000, history, D, DEFAULTS).status == "pass"


# --- invariants on the accepted parquet ---------------------------------------------------------


def _accepted_file(path: Path, rows: Sequence[dict[str, Any]], region: str = "us_east") -> Path:
    """Accepted parquet as the transform writes it, optionally corrupted afterwards."""
    accepted, _ = transform_frame(
        pa.Table.from_pylist(list(rows), schema=contract.contract_arrow_schema()),
        region=region,
        business_date=D,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(accepted, path)
    return path


def measured(files: Sequence[Path], region: str = "us_east") -> AcceptedMeasures:
    """``files`` measured as the transform's read-back of its accepted files measures them."""
    con = duckdb.connect(":memory:")
    try:
        return measure_accepted(con, {region: files}, business_date=D)[region]
    finally:
        con.close()


def test_invariants_pass_on_transform_output(tmp_path: Path) -> None:
    result = transformed(tmp_path, "us_east", [sale(1), sale(2), sale(2), sale(3, quantity=0)])
    assert result.accepted_measures == measured(result.accepted_files)
    assert result.accepted_measures.rows == result.rows_accepted == 2
    checks = invariant_checks({"us_east": result.accepted_measures}, D)
    assert [(c.name, c.status, c.measured) for c in checks] == [
        ("no_duplicate_keys", "pass", 0.0),
        ("no_rule_violations", "pass", 0.0),
        ("sale_date_is_business_date", "pass", 0.0),
    ]


def test_invariants_catch_duplicates_violations_and_foreign_dates(tmp_path: Path) -> None:
    good = _accepted_file(tmp_path / "a" / "part-0.parquet", [sale(1), sale(2)])
    table = pq.read_table(good)
    bad = table.to_pylist()
    bad[0]["quantity"] = 0  # rule violation (and gross no longer matches)
    bad[1]["sale_date"] = date(2024, 1, 14)
    bad.append(dict(bad[1], customer_id=None))  # duplicate key, NULL critical column
    second = tmp_path / "a" / "part-1.parquet"
    pq.write_table(pa.Table.from_pylist(bad, schema=contract.accepted_arrow_schema()), second)
    checks = {c.name: c for c in invariant_checks({"us_east": measured([good, second])}, D)}
    assert checks["no_duplicate_keys"].measured == 3  # sale 1 x2, sale 2 x3
    assert checks["no_rule_violations"].measured == 2
    assert "quantity_not_positive: 1" in checks["no_rule_violations"].detail
    assert "null_customer_id: 1" in checks["no_rule_violations"].detail
    assert checks["sale_date_is_business_date"].measured == 2
    assert all(c.status == "fail" for c in checks.values())


def test_invariants_catch_rows_of_another_region(tmp_path: Path) -> None:
    f = _accepted_file(tmp_path / "part-0.parquet", [sale(1)], region="europe")
    checks = {c.name: c for c in invariant_checks({"us_east": measured([f])}, D)}
    assert checks["no_rule_violations"].status == "fail"
    assert "region_mismatch: 1" in checks["no_rule_violations"].detail


def test_region_without_files_measures_zero() -> None:
    checks = invariant_checks({"us_east": measured([])}, D)
    assert {(c.status, c.measured) for c in checks} == {("pass", 0.0)}


def _corrupting_accepted_select(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the transform write wrong accepted rows that still reconcile (same rows, same
    total_amount): sale 1 gets another sale_date, sale 2 quantity 0, sale 3 the key of sale 4."""
    select = transform._accepted_select

    def corrupted() -> str:
        return (
            "SELECT * REPLACE ("
            "CASE WHEN sale_id = 1 THEN sale_date - 1 ELSE sale_date END AS sale_date, "
            "CASE WHEN sale_id = 2 THEN 0 ELSE quantity END AS quantity, "
            "CASE WHEN sale_id = 3 THEN 4 ELSE sale_id END AS sale_id"
            f") FROM ({select()})"
        )

    monkeypatch.setattr(transform, "_accepted_select", corrupted)


def test_gate_catches_and_names_a_transform_writing_violating_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corrupting_accepted_select(monkeypatch)
    result = transformed(tmp_path, "us_east", [sale(i) for i in range(1, 151)])
    report = evaluate({"us_east": result}, history={"us_east": weekly(150)})
    assert report.verdict == "fail"
    assert {c.name for c in report.failing} == {
        "no_duplicate_keys",
        "no_rule_violations",
        "sale_date_is_business_date",
    }
    assert check(report, "no_duplicate_keys").measured == 1
    assert check(report, "no_rule_violations").detail == (
        "derived_metrics_mismatch: 1, quantity_not_positive: 1"
    )
    assert check(report, "sale_date_is_business_date").detail == (
        "1 of 150 accepted rows have a sale_date other than 2024-01-15"
    )


def test_gate_judges_the_transforms_measures_without_reading_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corrupting_accepted_select(monkeypatch)
    bad = transformed(tmp_path / "bad", "us_east", [sale(i) for i in range(1, 151)])
    monkeypatch.undo()
    good = transformed(tmp_path / "good", "europe", [sale(i) for i in range(1, 151)])
    for result in (bad, good):
        for f in result.accepted_files:
            f.unlink()  # the gate must not need them
    report = evaluate({"us_east": bad, "europe": good})
    assert [(c.name, c.measured) for c in report.failing] == [
        ("no_duplicate_keys", 1.0),
        ("no_rule_violations", 1.0),  # sale 2: two terms, one row
        ("sale_date_is_business_date", 1.0),
    ]
    assert all(c.region == "us_east" for c in report.failing)
    assert check(report, "no_rule_violations", "europe").detail == ("none among 150 accepted rows")


def test_transform_result_with_measures_survives_pickling(tmp_path: Path) -> None:
    """Results cross task boundaries (Prefect results, Dask workers) pickled."""
    result = transformed(tmp_path, "us_east", [sale(1), sale(1, quantity=0)])
    assert pickle.loads(pickle.dumps(result)) == result


# --- report output ------------------------------------------------------------------------------


def _lines(md: str, title: str, start: str) -> list[str]:
    """The lines starting with ``start`` in the ``### title`` section."""
    lines = md.splitlines()
    section = []
    for line in lines[lines.index(f"### {title}") + 1 :]:
        if line.startswith("### "):
            break
        if line.startswith(start):
            section.append(line)
    return section


def _section(md: str, title: str) -> list[str]:
    """The table rows (after header and separator) of the ``### title`` section."""
    return _lines(md, title, "| ")[2:]


def _items(md: str, title: str) -> list[str]:
    """The list items of the ``### title`` section."""
    return _lines(md, title, "- ")


def test_markdown_puts_verdict_then_failing_and_warning_checks_with_thresholds() -> None:
    report = evaluate(
        {
            "us_east": stats(null_counts={"customer_id": 100}),
            "apac": stats("apac"),
        },
        history={"us_east": weekly(1500), "apac": weekly(1000)},
    )
    md = report.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "## Quality gate: FAIL"
    assert "1 failing, 1 warning, " in lines[2]
    assert _items(md, "Failing checks") == [
        "- **null_share_customer_id** (us_east): 10.00% vs threshold 5.00%: "
        "100 of 1,000 extracted rows have NULL customer_id"
    ]
    (warning,) = _items(md, "Warnings")
    assert warning.startswith(
        "- **history_volume** (us_east): 33.33% vs threshold 30.00%: 1,000 accepted rows"
    )
    # The matrix: one row per region, groups show their worst status; passes are not listed.
    matrix = _section(md, "By region")
    assert matrix[0] == ("| us_east | ok 1,000 | FAIL (1 of 8) | ok 0.00% | WARN 33.33% | ok |")
    assert matrix[1] == "| apac | ok 1,000 | ok | ok 0.00% | ok 0.00% | ok |"
    assert matrix[2].startswith("| batch | ok 2,000 (`min_rows_batch`) |")
    passed = sum(c.status == "pass" for c in report.checks)
    assert f"Passed: {passed} of {len(report.checks)} checks" in md
    assert md.count("| pass |") == 0


def test_a_skipped_history_check_shows_rows_not_a_percentage() -> None:
    report = evaluate({"us_east": stats(extracted=44_933)})
    skipped = check(report, "history_volume")
    assert skipped.status == "skipped" and skipped.threshold is None
    assert (skipped.measured_text, skipped.threshold_text) == ("44,933", "-")
    md = report.to_markdown()
    assert "%" not in _section(md, "By region")[0].split("|")[5]
    assert "4493300.00%" not in md and "- history_volume (us_east): no history yet" in md
    assert _section(md, "By region")[0].split(" | ")[4] == "skipped"
    # ratios stay ratios when the check ran
    ran = check(evaluate({"us_east": stats()}, history={"us_east": weekly(1000)}), "history_volume")
    assert ran.measured_text == "0.00%" and ran.threshold_text == "50.00%"


def test_an_empty_source_day_is_named_as_such() -> None:
    report = evaluate({"us_east": stats(extracted=0), "apac": stats("apac")})
    empty = check(report, "min_rows_region")
    assert empty.status == "fail"
    assert empty.detail.startswith("the source holds 0 rows for 2024-01-15 in us_east")
    assert check(report, "min_rows_region", "apac").detail == "1,000 accepted rows"
    alone = evaluate({"us_east": stats(extracted=0)})
    assert check(alone, "min_rows_batch", "*").detail.startswith(
        "the source holds 0 rows for 2024-01-15 in every region (us_east)"
    )


def test_records_for_dq_results() -> None:
    report = evaluate({"us_east": stats(extracted=50)})
    records = report.to_records("flow-1")
    assert len(records) == len(report.checks)
    first = next(r for r in records if r["check_name"] == "min_rows_region")
    assert first == {
        "batch_id": "B1",
        "business_date": D,
        "region": "us_east",
        "check_name": "min_rows_region",
        "measured": 50.0,
        "threshold": 100.0,
        "status": "fail",
        "detail": first["detail"],
        "flow_run_id": "flow-1",
    }
    history_row = next(r for r in records if r["check_name"] == "history_volume")
    assert history_row["threshold"] is None and history_row["status"] == "skipped"


def test_the_volume_chart_draws_each_region_against_its_history_band() -> None:
    import base64
    import re

    from retail_etl.charts import volume_chart_svg
    from retail_etl.quality import history_baselines

    history = {"us_east": [*weekly(1000), (D - timedelta(days=1), 900)], "apac": []}
    baselines = history_baselines(history, D, DEFAULTS)
    assert baselines == {"us_east": 1000}  # the same-weekday mean; apac has no history
    svg = volume_chart_svg(history, {"us_east": 400, "apac": 50}, D, DEFAULTS, baselines)

    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert ">us_east<" in svg and ">apac<" in svg
    assert "baseline 1,000" in svg  # the same-weekday mean, as history_volume computes it
    assert "no baseline yet" in svg  # apac has no history
    assert svg.count('fill="#facc1540"') == 1 and svg.count('fill="#ef444426"') == 1
    assert "today 400" in svg and "today 50" in svg
    # the five history points of us_east: a line through them plus one dot each
    (line,) = re.findall(r'<polyline points="([^"]+)"', svg)
    assert len(line.split()) == 5
    # embedded in the report as an image
    report = evaluate({"us_east": stats(extracted=400)}, history=history)
    (encoded,) = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", report.to_markdown())
    assert ">us_east<" in base64.b64decode(encoded).decode()


def test_a_region_whose_accepted_files_were_not_measured_fails_the_gate() -> None:
    unmeasured = replace(stats("europe"), accepted_measures=None)
    report = evaluate({"us_east": stats("us_east"), "europe": unmeasured})
    failing = {(c.region, c.name, c.detail) for c in report.failing}
    assert report.verdict == "fail"
    assert failing == {
        ("europe", name, "the accepted files were not measured")
        for name in ("no_duplicate_keys", "no_rule_violations", "sale_date_is_business_date")
    }
