"""The weekly quality report: pure rendering on tiny data, and its SQL on DuckDB and Snowflake
(fakesnow) over tables written through the warehouses' own load and ledger methods."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retail_etl.report import (
    LEDGER_COUNTS,
    GateIssue,
    QualityReport,
    ReasonTrend,
    RegionDay,
    SchemaChange,
    collect_report,
    default_window,
    render_markdown,
    summary_message,
    volume_chart,
)
from retail_etl.run import batch_run_date
from retail_etl.staging import LocalStagingStore
from retail_etl.warehouse import Warehouse, sql_renderer
from retail_etl.warehouse.base import LedgerEntry
from retail_etl.warehouse.dialect import SqlDialect
from tests.test_staging import accepted_table, reject_table, retraction_table, write_parquet

D1, D2, D3 = dt.date(2024, 1, 15), dt.date(2024, 1, 16), dt.date(2024, 1, 17)
EMPTY = dict.fromkeys(LEDGER_COUNTS)


def _day(
    region: str, day: dt.date, status: str | None, accepted: int | None, **kw: Any
) -> RegionDay:
    values: dict[str, Any] = {
        "counts": {**EMPTY, "rows_accepted": accepted},
        "ever_loaded": status == "loaded",
        "fact_rows": accepted or 0,
        "rejects": 0,
        "retractions": 0,
        "median_accepted": None,
        "history_points": 0,
    }
    values.update(kw)
    return RegionDay(region=region, business_date=day, status=status, **values)


def tiny_report() -> QualityReport:
    return QualityReport(
        start=D1,
        end=D2,
        regions=["us_east", "europe"],
        days=[
            _day("us_east", D1, "loaded", 1000, median_accepted=1000.0, history_points=3),
            _day("europe", D1, "gate_failed", None),
            _day("us_east", D2, "loaded", 500, median_accepted=1000.0, history_points=4),
            _day("europe", D2, None, None),
        ],
        reasons=[ReasonTrend("null_customer_id", 7, 2), ReasonTrend("duplicate", 1, 4)],
        gate_issues=[
            GateIssue(D1, "europe", "min_rows_region", "fail", 3.0, 100.0, "3 | rows", "b1")
        ],
        schema_changes=[
            SchemaChange(
                "us_east",
                dt.datetime(2024, 1, 16, 6, tzinfo=dt.UTC),
                "new column loyalty_tier (text)",
                "20240116_0123456789ab",
            )
        ],
    )


def test_markdown_is_a_function_of_the_collected_data() -> None:
    text = render_markdown(tiny_report(), chart="report.svg")

    assert text.startswith("# Data quality report 2024-01-15 to 2024-01-16\n")
    assert "Region-days loaded: 2 of 4; missing: 2. Accepted rows 1,500" in text
    missing = text.split("## Days still missing")[1].split("##")[0]
    assert "| 2024-01-15 | europe | gate_failed |" in missing
    assert "| 2024-01-16 | europe | never run |" in missing
    assert "us_east" not in missing
    # half the median is an outlier (beyond 30%); the day at the median is not
    assert "- 2024-01-16 us_east: 500 vs median 1,000 (-50%)" in text
    assert "2024-01-15 us_east: 1,000" not in text
    assert "| `null_customer_id` | 7 | 2 | +5 |" in text
    assert "| `duplicate` | 1 | 4 | -3 |" in text
    assert "| 2024-01-15 | europe | `min_rows_region` | FAIL | 3 | 100 | 3 / rows |" in text
    assert "| 2024-01-16 06:00 | us_east | new column loyalty_tier (text) |" in text
    assert "![daily accepted rows per region](report.svg)" in text
    assert render_markdown(tiny_report(), chart=None).count("![") == 0


def test_slack_summary_names_what_needs_a_look() -> None:
    message = summary_message(tiny_report())

    assert message.title == "Weekly data quality 2024-01-15 to 2024-01-16"
    lines = message.text.splitlines()
    assert lines[0] == "• Loaded 2 of 4 region-days; accepted 1,500, rejected 0, retracted 0"
    assert lines[1] == "• Missing (2): europe 2024-01-15, europe 2024-01-16"
    assert "• Gate: 1 failure(s), 0 warning(s)" in lines
    assert "• Top reject reason: null_customer_id 7 (+5 vs the period before)" in lines
    assert "• Volume: 1 region-day(s) beyond 30% of the trailing median" in lines
    assert "• Schema changes: 1" in lines


def test_chart_has_a_panel_per_region_and_a_dot_per_loaded_day() -> None:
    svg = volume_chart(tiny_report())

    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<title>") == 2  # us_east's two loaded days; europe none
    assert "<title>2024-01-16: 500</title>" in svg
    assert ">us_east</text>" in svg and ">europe</text>" in svg


def test_default_window_is_the_seven_business_days_before_the_run() -> None:
    monday_morning = dt.datetime(2024, 1, 22, 7, 30, tzinfo=dt.UTC)
    assert default_window(monday_morning, "UTC") == (dt.date(2024, 1, 15), dt.date(2024, 1, 21))
    # 03:00 UTC Monday is still Sunday in New York: the week ends on Saturday
    early = dt.datetime(2024, 1, 22, 3, tzinfo=dt.UTC)
    assert default_window(early, "America/New_York") == (
        dt.date(2024, 1, 14),
        dt.date(2024, 1, 20),
    )
    assert batch_run_date("20240116_0123456789ab") == dt.date(2024, 1, 16)
    assert batch_run_date("b-1") is None


# --------------------------------------------------------------------------- both engines


@pytest.fixture(params=["duckdb", "snowflake"])
def engine(
    request: pytest.FixtureRequest, tmp_path: Path, store: LocalStagingStore
) -> Iterator[tuple[Any, SqlDialect]]:
    """(warehouse, the target the report writes its SQL for) of each engine."""
    if request.param == "duckdb":
        from retail_etl.warehouse.dialects.duckdb import DuckDBDialect

        dialect = DuckDBDialect(tmp_path / "wh.duckdb", store, memory_limit="256MB", threads=1)
        wh: Any = Warehouse(dialect, store)
        wh.ensure_schema()
        yield wh, sql_renderer("duckdb")
        return
    fakesnow = pytest.importorskip("fakesnow")
    import snowflake.connector

    from retail_etl.warehouse.dialects.snowflake import SnowflakeConnection, SnowflakeDialect
    from tests.fake_snowflake import FakeSnowflake

    with fakesnow.patch():
        # The production connection's current schema is the warehouse's: unqualified names.
        def connect() -> Any:
            return snowflake.connector.connect(database="retail_db", schema="retail")

        setup = snowflake.connector.connect(database="retail_db", schema="public")
        setup.cursor().execute("CREATE SCHEMA IF NOT EXISTS retail_db.retail")
        setup.close()
        connection = SnowflakeConnection(
            FakeSnowflake(connect), database="retail_db", schema="retail"
        )
        wh = Warehouse(SnowflakeDialect(connection, store), store)
        wh.ensure_schema()
        yield wh, sql_renderer("snowflake")


def _load(
    tmp_path: Path, store: LocalStagingStore, wh: Any, day: dt.date, batch: str, **kw: Any
) -> None:
    """One us_east day loaded as the load subflow does: accepted, rejects, retractions staged."""
    from retail_etl.records import RegionLoad, RegionRecord

    def staged(name: str, table: Any) -> tuple[Any, ...]:
        src = write_parquet(tmp_path / "transform" / f"{batch}-{name}.parquet", table)
        return tuple(store.stage_dataset(name, day, "us_east", batch, [src]))  # type: ignore[arg-type]

    sales = accepted_table("us_east", day, kw["sales"], batch_id=batch)
    rejects = kw.get("rejects") or []
    retractions = kw.get("retractions") or []
    wh.load_region(
        RegionLoad(
            region="us_east",
            business_date=day,
            batch_id=batch,
            files=staged("sales", sales),
            flow_run_id="flow-1",
            record=RegionRecord(
                "us_east", rows_accepted=sales.num_rows, rows_retracted=len(retractions)
            ),
            reject_files=(
                staged("rejects", reject_table("us_east", day, rejects, batch_id=batch))
                if rejects
                else ()
            ),
            retraction_files=(
                staged("retractions", retraction_table("us_east", day, retractions, batch_id=batch))
                if retractions
                else ()
            ),
        )
    )


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
def test_collect_reads_the_same_numbers_on_both_engines(
    engine: tuple[Any, SqlDialect], tmp_path: Path, store: LocalStagingStore
) -> None:
    wh, target = engine
    # history of us_east for the median: 100, 110, 120 accepted
    for n, day in enumerate((dt.date(2024, 1, 8), dt.date(2024, 1, 9), dt.date(2024, 1, 10))):
        wh.record_ledger(
            LedgerEntry(f"b-h{n}", "us_east", day, "loaded", rows_accepted=100 + 10 * n)
        )
    # the period before: 3 rejects
    _load(
        tmp_path,
        store,
        wh,
        dt.date(2024, 1, 12),
        "20240112_00000000000a",
        sales=range(100, 103),
        rejects=[20, 21, 22],
    )
    # D1: loaded with two rejects, then reloaded retracting sale 1 (rejects replaced: 2 again)
    _load(tmp_path, store, wh, D1, "20240115_00000000000a", sales=range(1, 6), rejects=[6, 7])
    _load(
        tmp_path,
        store,
        wh,
        D1,
        "20240115_00000000000b",
        sales=range(2, 6),
        rejects=[6, 7],
        retractions=[1],
    )
    # europe D1 failed the gate; D2 loaded (ledger only); D3 never ran anywhere
    wh.record_ledger(LedgerEntry("20240115_00000000000c", "europe", D1, "gate_failed", error="x"))
    wh.record_ledger(LedgerEntry("20240116_00000000000c", "europe", D2, "loaded", rows_accepted=9))
    wh.record_ledger(LedgerEntry("20240116_00000000000d", "us_east", D2, "extract_failed"))
    checked = dt.datetime(2024, 1, 16, 6, tzinfo=dt.UTC)
    wh.load_dq_results(
        [
            {
                "batch_id": "20240115_00000000000c",
                "business_date": D1,
                "region": "europe",
                "check_name": "min_rows_region",
                "measured": 3,
                "threshold": 100,
                "status": "fail",
                "detail": "3 accepted rows",
                "checked_at": checked,
            },
            {
                "batch_id": "20240115_00000000000c",
                "business_date": D1,
                "region": "europe",
                "check_name": "reject_rate",
                "measured": 0.01,
                "threshold": 0.05,
                "status": "pass",
                "detail": "",
                "checked_at": checked,
            },
        ]
    )
    wh.record_schema(
        "us_east",
        "fp-new",
        {"sale_id": "bigint"},
        "new column x (text)",
        "20240116_00000000000d",
        None,
    )
    wh.record_schema("europe", "fp-old", {"sale_id": "bigint"}, "", "20240101_00000000000e", None)

    report = collect_report(wh.query, target, D1, D3, ["us_east", "europe"])

    by_pair = {(d.region, d.business_date): d for d in report.days}
    east = by_pair[("us_east", D1)]
    assert east.status == "loaded"
    assert east.counts["rows_accepted"] == 4 and east.counts["rows_retracted"] == 1
    assert (east.fact_rows, east.rejects, east.retractions) == (4, 2, 1)
    assert east.median_accepted == 105.0  # 100, 110, 120 and the 3 of 2024-01-12
    assert east.history_points == 4
    assert by_pair[("europe", D1)].status == "gate_failed"
    assert by_pair[("europe", D2)].accepted == 9 and by_pair[("europe", D2)].median_accepted is None
    assert [(d.region, d.business_date, d.status) for d in report.missing] == [
        ("europe", D1, "gate_failed"),
        ("us_east", D2, "extract_failed"),
        ("us_east", D3, None),
        ("europe", D3, None),
    ]
    assert report.reasons == [ReasonTrend("null_customer_id", 2, 3)]
    assert [(i.region, i.check_name, i.status, i.measured) for i in report.gate_issues] == [
        ("europe", "min_rows_region", "fail", 3.0)
    ]
    assert [(c.region, c.differences) for c in report.schema_changes] == [
        ("us_east", "new column x (text)")
    ]


def test_the_configured_report_refuses_an_unknown_region(monkeypatch) -> None:
    from retail_etl.report import collect_configured_report
    from retail_etl.settings import Settings

    def no_query(sql: str, params: Any) -> list[tuple[Any, ...]]:
        raise AssertionError("no query for a refused region")

    with pytest.raises(ValueError, match="unknown region\\(s\\) mars; configured regions are"):
        collect_configured_report(no_query, Settings(), D1, D2, ["us_east", "mars"])
