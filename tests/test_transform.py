"""Transform rules on tiny frames, and transform_region on tiny parquet files (no Prefect)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_etl import contract, transform
from retail_etl.rules import REJECT_RULES
from retail_etl.transform import (
    ReconciliationError,
    TransformInputError,
    all_reasons,
    classify_frame,
    transform_frame,
    transform_region,
)

D = date(2024, 1, 15)
T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def row(**overrides: Any) -> dict[str, Any]:
    """A valid contract row: 2 x 10.00 = 20.00."""
    base: dict[str, Any] = {
        "sale_id": 1,
        "customer_id": 100,
        "store_id": 7,
        "product_id": 42,
        "quantity": 2,
        "unit_price": Decimal("10.00"),
        "discount": Decimal("0.00"),
        "tax": Decimal("1.60"),
        "total_amount": Decimal("20.00"),
        "sale_date": D,
        "status": "completed",
        "is_deleted": False,
        "created_at": T0,
        "updated_at": T0,
        "extras": None,
    }
    base.update(overrides)
    return base


def frame(rows: Sequence[dict[str, Any]], **types: pa.DataType) -> pa.Table:
    """Rows in the contract schema, except columns given in ``types`` (schema drift)."""
    schema = contract.contract_arrow_schema()
    for name, typ in types.items():
        schema = schema.set(schema.get_field_index(name), pa.field(name, typ))
    return pa.Table.from_pylist(list(rows), schema=schema)


def run(rows: Sequence[dict[str, Any]], **types: pa.DataType) -> tuple[list[dict], list[dict]]:
    accepted, rejects = transform_frame(frame(rows, **types), region="us_east", business_date=D)
    return accepted.to_pylist(), rejects.to_pylist()


def reasons_of(rows: Sequence[dict[str, Any]], **types: pa.DataType) -> list[str]:
    return [r["reasons"] for r in run(rows, **types)[1]]


def read(files: Sequence[Path] | Path) -> pa.Table:
    """Read output parquet; the files carry ``region`` themselves, so no hive partitioning."""
    return pq.read_table(files, partitioning=None)


def write_extract(path: Path, rows: Sequence[dict[str, Any]], **types: pa.DataType) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(frame(rows, **types), path)
    return path


# --- accepted rows and derived metrics ---------------------------------------------------------


def test_valid_row_is_accepted_with_derived_metrics_and_lineage() -> None:
    accepted, rejects = run(
        [row(quantity=3, discount=Decimal("1.50"), total_amount=Decimal("30.00"))]
    )
    assert rejects == []
    (a,) = accepted
    assert a["region"] == "us_east"
    assert a["gross_amount"] == Decimal("30.00")
    assert a["net_amount"] == Decimal("28.50")
    assert a["effective_discount_rate"] == Decimal("0.050000")
    assert (a["batch_id"], a["flow_run_id"]) == ("b", "f")


def test_effective_discount_rate_rounds_half_away_from_zero_exactly() -> None:
    # 0.01 / 20000.00 = 0.0000005 exactly: a float would give 4.99...e-07 and round down.
    accepted, _ = run(
        [row(quantity=2000, discount=Decimal("0.01"), total_amount=Decimal("20000.00"))]
    )
    assert accepted[0]["effective_discount_rate"] == Decimal("0.000001")


def test_null_discount_and_tax_become_zero() -> None:
    accepted, rejects = run([row(discount=None, tax=None)])
    assert rejects == []
    assert accepted[0]["discount"] == Decimal("0.00")
    assert accepted[0]["tax"] == Decimal("0.00")
    assert accepted[0]["net_amount"] == Decimal("20.00")


def test_status_and_region_normalized() -> None:
    accepted, _ = transform_frame(
        frame([row(status="  COMPLETED ")]), region="US_East", business_date=D
    )
    assert accepted.column("status").to_pylist() == ["completed"]
    assert accepted.column("region").to_pylist() == ["us_east"]


def test_extras_pass_through() -> None:
    accepted, _ = run([row(extras='{"loyalty_tier": "gold"}')])
    assert json.loads(accepted[0]["extras"]) == {"loyalty_tier": "gold"}


# --- business rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "reasons"),
    [
        ("10.00", []),  # exactly 0.5 x 20.00
        ("40.00", []),  # exactly 2 x 20.00
        ("9.99", ["total_amount_out_of_range"]),
        ("40.01", ["total_amount_out_of_range"]),
    ],
)
def test_total_amount_bounds_are_inclusive(total: str, reasons: list[str]) -> None:
    assert reasons_of([row(total_amount=Decimal(total))]) == reasons


@pytest.mark.parametrize("quantity", [0, -1])
def test_quantity_not_positive(quantity: int) -> None:
    assert reasons_of([row(quantity=quantity)]) == ["quantity_not_positive"]


def test_unit_price_zero_rejected() -> None:
    assert reasons_of([row(unit_price=Decimal("0.00"))]) == ["unit_price_not_positive"]


def test_sale_date_other_than_business_date_rejected() -> None:
    assert reasons_of([row(sale_date=date(2024, 1, 14))]) == ["sale_date_mismatch"]


def test_discount_too_large_for_the_rate_column_rejected() -> None:
    assert reasons_of([row(discount=Decimal("20000.00"))]) == [
        "effective_discount_rate_out_of_range"
    ]
    assert reasons_of([row(discount=Decimal("19999.99"))]) == []  # rate 999.9995 -> fits


@pytest.mark.parametrize("column", contract.CRITICAL_COLUMNS)
def test_null_in_critical_column_rejected(column: str) -> None:
    assert reasons_of([row(**{column: None})]) == [f"null_{column}"]


def test_multiple_reasons_sorted_and_joined() -> None:
    got = reasons_of([row(customer_id=None, quantity=0, sale_date=date(2024, 1, 1))])
    assert got == ["null_customer_id;quantity_not_positive;sale_date_mismatch"]


def test_reasons_vocabulary_is_sorted_and_complete() -> None:
    reasons = all_reasons()
    assert list(reasons) == sorted(reasons)
    assert {"duplicate", "null_sale_id", "invalid_quantity", *REJECT_RULES} <= set(reasons)


# --- type standardization (schema drift: columns arriving as strings) --------------------------


def test_invalid_quantity_from_string_column() -> None:
    accepted, rejects = run(
        [row(sale_id=1, quantity="abc"), row(sale_id=2, quantity=" 2 ")], quantity=pa.string()
    )
    assert [r["reasons"] for r in rejects] == ["invalid_quantity"]
    assert json.loads(rejects[0]["raw_values"])["quantity"] == "abc"
    assert [(a["sale_id"], a["quantity"]) for a in accepted] == [(2, 2)]


def test_fractional_quantity_is_invalid_not_rounded() -> None:
    assert reasons_of([row(quantity="2.5")], quantity=pa.string()) == ["invalid_quantity"]
    assert reasons_of([row(quantity="2.0")], quantity=pa.string()) == []


def test_unit_price_with_more_decimals_than_contract_is_invalid_not_rounded() -> None:
    accepted, rejects = run(
        [row(sale_id=1, unit_price="12.345"), row(sale_id=2, unit_price="10.0")],
        unit_price=pa.string(),
    )
    assert [(r["sale_id"], r["reasons"]) for r in rejects] == [(1, "invalid_unit_price")]
    assert json.loads(rejects[0]["raw_values"])["unit_price"] == "12.345"
    assert accepted[0]["unit_price"] == Decimal("10.00")


def test_money_drifted_to_float_is_taken_by_its_shortest_decimal_text() -> None:
    rows = [
        row(sale_id=1, unit_price=10.1, total_amount=20.2),
        row(sale_id=2, unit_price=10.005, total_amount=20.0),
    ]
    accepted, rejects = run(rows, unit_price=pa.float64(), total_amount=pa.float64())
    assert [(a["unit_price"], a["total_amount"]) for a in accepted] == [
        (Decimal("10.10"), Decimal("20.20"))
    ]
    assert [r["reasons"] for r in rejects] == ["invalid_unit_price"]


def test_decimal_overflow_is_invalid() -> None:
    assert reasons_of([row(total_amount="12345678901.00")], total_amount=pa.string()) == [
        "invalid_total_amount"
    ]


def test_timestamps_from_strings_are_converted_to_utc() -> None:
    rows = [
        row(sale_id=1, updated_at="2024-01-15 12:00:00+02:00"),
        row(sale_id=2, updated_at="2024-01-15 10:00:00"),  # no offset: taken as UTC
        row(sale_id=3, updated_at="yesterday-ish"),
    ]
    accepted, rejects = run(rows, updated_at=pa.string())
    assert [a["updated_at"] for a in accepted] == [T0, T0]
    assert all(a["updated_at"].utcoffset().total_seconds() == 0 for a in accepted)
    assert [(r["sale_id"], r["reasons"]) for r in rejects] == [(3, "invalid_updated_at")]


def test_pandas_frame_with_string_columns() -> None:
    df = pd.DataFrame([row(quantity="3", total_amount="30.00")])
    accepted, rejects = transform_frame(df, region="us_east", business_date=D)
    assert rejects.num_rows == 0
    assert accepted.column("quantity").to_pylist() == [3]
    assert accepted.column("total_amount").to_pylist() == [Decimal("30.00")]


def test_missing_contract_column_raises_naming_it() -> None:
    table = frame([row()]).drop_columns(["customer_id"])
    with pytest.raises(TransformInputError, match="customer_id"):
        transform_frame(table, region="us_east", business_date=D)


# --- deduplication -----------------------------------------------------------------------------


def test_latest_updated_at_wins_and_losers_are_duplicates() -> None:
    later = T0 + timedelta(hours=2)
    rows = [
        row(sale_id=5, quantity=1, total_amount=Decimal("10.00"), updated_at=T0),
        row(sale_id=5, quantity=3, total_amount=Decimal("30.00"), updated_at=later),
        row(sale_id=5, quantity=2, updated_at=None),
    ]
    accepted, rejects = run(rows)
    assert [(a["sale_id"], a["quantity"], a["total_amount"]) for a in accepted] == [
        (5, 3, Decimal("30.00"))
    ]
    assert sorted(json.loads(r["raw_values"])["quantity"] for r in rejects) == ["1", "2"]
    assert {r["reasons"] for r in rejects} == {"duplicate"}


def test_equal_updated_at_tie_does_not_depend_on_row_order() -> None:
    versions = [row(sale_id=5, customer_id=1), row(sale_id=5, customer_id=2)]
    first, first_rejects = run(versions)
    second, second_rejects = run(list(reversed(versions)))
    assert len(first) == 1 and first == second
    assert [r["reasons"] for r in first_rejects] == ["duplicate"]
    assert first_rejects == second_rejects


def test_equal_updated_at_tie_goes_to_the_latest_created_at() -> None:
    earlier = T0 - timedelta(hours=1)
    versions = [row(sale_id=5, customer_id=1), row(sale_id=5, customer_id=2, created_at=earlier)]
    for rows in (versions, list(reversed(versions))):
        accepted, _ = run(rows)
        assert [a["customer_id"] for a in accepted] == [1]


def classify(rows: Sequence[dict[str, Any]], **types: pa.DataType) -> tuple[list, list, list]:
    out = classify_frame(frame(rows, **types), region="us_east", business_date=D)
    return out.accepted.to_pylist(), out.rejects.to_pylist(), out.retractions.to_pylist()


@pytest.mark.parametrize(
    ("status", "deleted", "reason"),
    [
        ("refunded", False, "status_refunded"),
        (" Cancelled", False, "status_cancelled"),
        ("PENDING ", False, "status_pending"),
        ("completed", True, "deleted"),
        ("refunded", True, "deleted"),
        ("on hold!", False, "status_other"),
        (None, False, "status_null"),
    ],
)
def test_latest_version_not_completed_is_a_retraction(
    status: str | None, deleted: bool, reason: str
) -> None:
    accepted, rejects, retractions = classify(
        [row(sale_id=7, status=status, is_deleted=deleted), row(sale_id=8)]
    )
    assert [a["sale_id"] for a in accepted] == [8]
    assert rejects == []
    assert [(r["sale_id"], r["reason"], r["sale_date"]) for r in retractions] == [(7, reason, D)]
    assert json.loads(retractions[0]["raw_values"])["sale_id"] == "7"


def test_latest_version_refunded_retracts_the_older_completed_one() -> None:
    later = T0 + timedelta(hours=2)
    accepted, rejects, retractions = classify(
        [row(sale_id=42), row(sale_id=42, status="refunded", updated_at=later)]
    )
    assert accepted == []
    assert [r["reasons"] for r in rejects] == ["duplicate"]  # the completed older version
    assert [r["reason"] for r in retractions] == ["status_refunded"]


def test_status_compared_trimmed_and_case_insensitively() -> None:
    accepted, _, retractions = classify([row(sale_id=1, status=" Completed "), row(sale_id=2)])
    assert sorted(a["sale_id"] for a in accepted) == [1, 2]
    assert retractions == []


def test_retraction_of_an_invalid_row_is_still_a_retraction() -> None:
    """A deleted row whose values are bad retracts its key: it is not a reject."""
    _, rejects, retractions = classify([row(sale_id=3, customer_id=None, is_deleted=True)])
    assert rejects == [] and [r["reason"] for r in retractions] == ["deleted"]


def test_nan_money_values_are_rejected_with_the_raw_text() -> None:
    """The extract sends NUMERIC 'NaN' as NULL and names the column in nan_columns."""
    rows = [
        {**row(sale_id=1, discount=None), "nan_columns": ",discount,"},
        {**row(sale_id=2, tax=None, total_amount=None), "nan_columns": ",tax,total_amount,"},
        {**row(sale_id=3, discount=None), "nan_columns": None},  # a real NULL: 0.00
    ]
    schema = contract.contract_arrow_schema().append(pa.field("nan_columns", pa.string()))
    out = classify_frame(
        pa.Table.from_pylist(rows, schema=schema), region="us_east", business_date=D
    )
    accepted, rejects = out.accepted.to_pylist(), out.rejects.to_pylist()
    assert [(a["sale_id"], a["discount"]) for a in accepted] == [(3, Decimal("0.00"))]
    by_id = {r["sale_id"]: r for r in rejects}
    assert by_id[1]["reasons"] == "invalid_discount"
    assert by_id[2]["reasons"] == "invalid_tax;invalid_total_amount"  # not null_total_amount
    assert json.loads(by_id[1]["raw_values"])["discount"] == "NaN"
    raw = json.loads(by_id[2]["raw_values"])
    assert (raw["tax"], raw["total_amount"]) == ("NaN", "NaN")


def test_nan_text_in_a_drifted_money_column_is_invalid() -> None:
    rows = [row(sale_id=1, discount="NaN"), row(sale_id=2, discount="nan"), row(sale_id=3)]
    reasons = reasons_of(
        [{**r, "discount": str(r["discount"])} for r in rows], discount=pa.string()
    )
    assert reasons == ["invalid_discount", "invalid_discount"]


def test_invalid_latest_version_is_not_replaced_by_an_older_one() -> None:
    rows = [
        row(sale_id=5, updated_at=T0),
        row(sale_id=5, customer_id=None, updated_at=datetime(2024, 1, 15, 12, tzinfo=UTC)),
    ]
    accepted, rejects = run(rows)
    assert accepted == []
    assert sorted(r["reasons"] for r in rejects) == ["duplicate", "null_customer_id"]


def test_null_sale_ids_are_not_deduplicated() -> None:
    assert reasons_of([row(sale_id=None), row(sale_id=None)]) == ["null_sale_id", "null_sale_id"]


def test_duplicates_split_across_files_are_deduplicated(tmp_path: Path) -> None:
    later = datetime(2024, 1, 15, 12, tzinfo=UTC)
    extract = tmp_path / "extract" / "region=us_east"
    files = [
        # the winner sits in the FIRST file: order of files must not decide, updated_at does
        write_extract(
            extract / "part-00000.parquet",
            [
                row(sale_id=1, quantity=3, total_amount=Decimal("30.00"), updated_at=later),
                row(sale_id=2),
            ],
        ),
        write_extract(
            extract / "part-00001.parquet",
            [
                row(sale_id=1, quantity=1, total_amount=Decimal("10.00")),
                row(sale_id=3),
            ],
        ),
    ]
    result = transform_region(
        files,
        region="us_east",
        business_date=D,
        batch_id="B1",
        flow_run_id="F1",
        out_dir=tmp_path,
    )
    accepted = read(result.accepted_files).to_pylist()
    assert sorted((a["sale_id"], a["quantity"]) for a in accepted) == [(1, 3), (2, 2), (3, 2)]
    rejects = read(result.reject_files).to_pylist()
    assert [(r["sale_id"], r["reasons"]) for r in rejects] == [(1, "duplicate")]
    assert result.reasons == {"duplicate": 1}


def test_equal_sale_ids_in_different_regions_are_both_kept(tmp_path: Path) -> None:
    results = {}
    for region in ("us_east", "europe"):
        path = tmp_path / "extract" / f"region={region}" / "part-00000.parquet"
        f = write_extract(path, [row(sale_id=9)])
        results[region] = transform_region(
            [f], region=region, business_date=D, batch_id="B1", flow_run_id="F1", out_dir=tmp_path
        )
    files = sorted((tmp_path / "accepted").rglob("*.parquet"))
    keys = read(files).select(["region", "sale_id"]).to_pylist()
    assert sorted((k["region"], k["sale_id"]) for k in keys) == [("europe", 9), ("us_east", 9)]
    assert all(r.rows_accepted == 1 and r.rows_rejected == 0 for r in results.values())


# --- transform_region: files, schemas, reconciliation ------------------------------------------


@pytest.fixture
def mixed_extract(tmp_path: Path) -> list[Path]:
    """Two chunks; the second has quantity drifted to text. 6 rows: 3 accepted, 3 rejected."""
    extract = tmp_path / "extract" / "region=us_east"
    return [
        write_extract(
            extract / "part-00000.parquet",
            [
                row(sale_id=1, total_amount=Decimal("20.01")),
                row(sale_id=2, quantity=3, total_amount=Decimal("30.55"), discount=None),
                row(sale_id=3, total_amount=Decimal("99.99")),  # out of range
            ],
        ),
        write_extract(
            extract / "part-00001.parquet",
            [
                row(sale_id=4, quantity="abc", total_amount=Decimal("5.27")),  # invalid
                row(sale_id=5, quantity="2", customer_id=None, total_amount=None),  # two nulls
                row(sale_id=6, quantity="4", total_amount=Decimal("40.13")),
            ],
            quantity=pa.string(),
        ),
    ]


def test_transform_region_writes_contract_schemas_and_reconciles(
    tmp_path: Path, mixed_extract: list[Path]
) -> None:
    out = tmp_path / "run"
    result = transform_region(
        mixed_extract,
        region="us_east",
        business_date=D,
        batch_id="B42",
        flow_run_id="F42",
        out_dir=out,
    )
    assert (result.rows_extracted, result.rows_accepted, result.rows_rejected) == (6, 3, 3)
    assert result.reasons == {
        "invalid_quantity": 1,
        "null_customer_id": 1,
        "null_total_amount": 1,
        "total_amount_out_of_range": 1,
    }
    assert result.null_counts["customer_id"] == 1
    assert result.null_counts["total_amount"] == 1
    assert result.null_counts["sale_id"] == 0
    # money to the cent: raw castable totals 20.01+30.55+99.99+5.27+40.13 (row 5 is NULL)
    assert result.total_amount_extracted == Decimal("195.95")
    assert result.total_amount_accepted == Decimal("90.69")
    assert result.total_amount_rejected == Decimal("105.26")
    assert (
        result.total_amount_accepted + result.total_amount_rejected == result.total_amount_extracted
    )

    assert result.accepted_files == [out / "accepted" / "region=us_east" / "part-0.parquet"]
    assert result.reject_files == [out / "rejects" / "region=us_east" / "part-0.parquet"]
    assert (
        pq.read_schema(result.accepted_files[0])
        .remove_metadata()
        .equals(contract.accepted_arrow_schema())
    )
    assert (
        pq.read_schema(result.reject_files[0])
        .remove_metadata()
        .equals(contract.reject_arrow_schema())
    )
    accepted = read(result.accepted_files)
    assert accepted.column_names == list(contract.ACCEPTED_COLUMNS)
    for name in ("unit_price", "discount", "tax", "total_amount", "gross_amount", "net_amount"):
        assert pa.types.is_decimal128(accepted.schema.field(name).type), name
    assert accepted.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert sum(accepted.column("total_amount").to_pylist()) == Decimal("90.69")
    assert set(accepted.column("batch_id").to_pylist()) == {"B42"}
    assert set(accepted.column("flow_run_id").to_pylist()) == {"F42"}
    by_id = {a["sale_id"]: a for a in accepted.to_pylist()}
    assert by_id[2]["discount"] == Decimal("0.00")  # NULL discount

    rejects = {r["sale_id"]: r for r in read(result.reject_files).to_pylist()}
    assert rejects[4]["reasons"] == "invalid_quantity"
    assert rejects[5]["reasons"] == "null_customer_id;null_total_amount"
    raw = json.loads(rejects[4]["raw_values"])
    assert set(raw) == {*contract.COLUMN_NAMES, contract.EXTRAS_COLUMN}
    assert raw["quantity"] == "abc"
    assert raw["total_amount"] == "5.27"
    assert json.loads(rejects[5]["raw_values"])["customer_id"] is None
    assert {(r["batch_id"], r["flow_run_id"], r["sale_date"]) for r in rejects.values()} == {
        ("B42", "F42", D)
    }
    assert not (out / ".duckdb-tmp").exists() or not any((out / ".duckdb-tmp").iterdir())


def test_rerun_replaces_output(tmp_path: Path, mixed_extract: list[Path]) -> None:
    kwargs: dict[str, Any] = {
        "region": "us_east",
        "business_date": D,
        "batch_id": "B",
        "flow_run_id": "F",
        "out_dir": tmp_path / "run",
    }
    transform_region(mixed_extract, **kwargs)
    result = transform_region(mixed_extract[:1], **kwargs)
    assert read(sorted((tmp_path / "run").rglob("accepted/*/*.parquet"))).num_rows == 2
    assert read(sorted((tmp_path / "run").rglob("rejects/*/*.parquet"))).num_rows == 1
    assert (result.rows_accepted, result.rows_rejected) == (2, 1)


def test_zero_rows_write_empty_files_with_schema(tmp_path: Path) -> None:
    result = transform_region(
        [], region="apac", business_date=D, batch_id="B", flow_run_id="F", out_dir=tmp_path
    )
    assert (result.rows_extracted, result.rows_accepted, result.rows_rejected) == (0, 0, 0)
    assert result.total_amount_extracted == Decimal(0)
    assert result.null_counts == dict.fromkeys(contract.CRITICAL_COLUMNS, 0)
    accepted = read(result.accepted_files)
    assert accepted.num_rows == 0
    assert accepted.schema.remove_metadata().equals(contract.accepted_arrow_schema())
    assert read(result.reject_files).schema.remove_metadata().equals(contract.reject_arrow_schema())


def test_only_columns_with_few_values_are_dictionary_encoded(tmp_path: Path) -> None:
    # A column with more than 1024 values per row group is written plain, even where a
    # dictionary would pay (each product 20 times; DuckDB's default would build one): trying
    # them cost the writer a third of its CPU. A column with a few values keeps its dictionary.
    rows = [row(sale_id=i, product_id=i % 1500, store_id=i % 50) for i in range(1, 30_001)]
    f = write_extract(tmp_path / "x" / "part-00000.parquet", rows)
    result = transform_region(
        [f], region="us_east", business_date=D, batch_id="B", flow_run_id="F", out_dir=tmp_path
    )
    group = pq.ParquetFile(result.accepted_files[0]).metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema: any("DICTIONARY" in e for e in group.column(i).encodings)
        for i in range(group.num_columns)
    }
    assert result.rows_accepted == 30_000
    assert not dictionary["product_id"]
    assert not dictionary["sale_id"]
    assert dictionary["store_id"]
    assert dictionary["region"]


def test_max_file_rows_splits_output(tmp_path: Path) -> None:
    rows = [row(sale_id=i) for i in range(1, 5001)]
    f = write_extract(tmp_path / "x" / "part-00000.parquet", rows)
    result = transform_region(
        [f],
        region="us_east",
        business_date=D,
        batch_id="B",
        flow_run_id="F",
        out_dir=tmp_path,
        max_file_rows=2500,
    )
    counts = [pq.read_metadata(p).num_rows for p in result.accepted_files]
    assert len(counts) == 3 and max(counts) <= 2500 and sum(counts) == 5000
    assert len(result.reject_files) == 1  # none rejected: one empty file


def test_reconciliation_mismatch_raises_and_keeps_previous_output(
    tmp_path: Path, mixed_extract: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, Any] = {
        "region": "us_east",
        "business_date": D,
        "batch_id": "B",
        "flow_run_id": "F",
        "out_dir": tmp_path / "run",
    }
    previous = transform_region(mixed_extract, **kwargs)
    real = transform._stats

    def lossy(*args: Any) -> Any:
        stats = real(*args)
        return {r: dataclasses.replace(s, accepted=s.accepted - 1) for r, s in stats.items()}

    monkeypatch.setattr(transform, "_stats", lossy)
    with pytest.raises(ReconciliationError, match=r"us_east.*extracted 6 != accepted 2"):
        transform_region(mixed_extract, **kwargs)
    assert read(previous.accepted_files).num_rows == 3  # untouched
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_unreadable_extract_raises_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "part-00000.parquet"
    bad.write_text("not parquet")
    with pytest.raises(TransformInputError, match="us_east"):
        transform_region(
            [bad],
            region="us_east",
            business_date=D,
            batch_id="B",
            flow_run_id="F",
            out_dir=tmp_path,
        )


def test_regions_can_run_concurrently_from_threads(tmp_path: Path) -> None:
    regions = ("us_east", "us_west", "europe", "apac")
    files = {
        r: write_extract(
            tmp_path / "extract" / f"region={r}" / "part-00000.parquet",
            [row(sale_id=i) for i in range(1, 201)] + [row(sale_id=1)],
        )
        for r in regions
    }

    def one(region: str) -> transform.RegionTransformResult:
        return transform_region(
            [files[region]],
            region=region,
            business_date=D,
            batch_id="B",
            flow_run_id="F",
            out_dir=tmp_path,
            threads=1,
            memory_limit="256MB",
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, regions))
    assert [(r.region, r.rows_accepted, r.rows_rejected) for r in results] == [
        (r, 200, 1) for r in regions
    ]
    assert not (tmp_path / ".duckdb-tmp").exists()


def test_invalid_region_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="region"):
        transform_region(
            [],
            region="us-east; drop",
            business_date=D,
            batch_id="B",
            flow_run_id="F",
            out_dir=tmp_path,
        )


# --- regions in turn on one connection ----------------------------------------------------------


def _outcome(result: transform.RegionTransformResult) -> dict[str, Any]:
    """A result's counts, sums, measures and rows, without its timing and file paths."""
    files = ("accepted_files", "reject_files", "retraction_files")
    fields = dataclasses.asdict(result)
    rows = {f: sorted(map(str, read(getattr(result, f)).to_pylist())) for f in files}
    return {k: v for k, v in fields.items() if k not in (*files, "seconds")} | rows


def test_regions_in_turn_on_one_connection_match_their_own_connections(
    tmp_path: Path, mixed_extract: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection for the regions of a batch: each region's output as on its own connection,
    one connection opened; a region that fails after its temporary tables exist fails alone and
    the next region gets a fresh connection; empty regions twice in a row."""
    kwargs: dict[str, Any] = {"business_date": D, "batch_id": "B", "flow_run_id": "F"}
    order = [("us_east", mixed_extract), ("apac", []), ("europe", mixed_extract)]
    order += [("us_west", mixed_extract), ("africa", []), ("asia", [])]
    alone = {
        r: _outcome(transform_region(f, region=r, out_dir=tmp_path / "alone", **kwargs))
        for r, f in order
        if r != "europe"
    }
    opened: list[tuple[Any, ...]] = []
    real_connect, real_stats = transform._connect, transform._stats

    def counting_connect(*args: Any) -> Any:
        opened.append(args)
        return real_connect(*args)

    def lossy_for_europe(*args: Any) -> Any:
        stats = real_stats(*args)
        if "europe" in stats:
            stats["europe"] = dataclasses.replace(stats["europe"], accepted=0)
        return stats

    monkeypatch.setattr(transform, "_connect", counting_connect)
    monkeypatch.setattr(transform, "_stats", lossy_for_europe)
    shared: dict[str, dict[str, Any]] = {}
    out = tmp_path / "shared"
    with transform.transform_connection(out, memory_limit="256MB", threads=1) as connection:
        for region, files in order:
            if region == "europe":
                with pytest.raises(ReconciliationError, match="europe"):
                    transform_region(
                        files, region=region, out_dir=out, connection=connection, **kwargs
                    )
                continue
            result = transform_region(
                files, region=region, out_dir=out, connection=connection, **kwargs
            )
            shared[region] = _outcome(result)
    assert shared == alone
    assert shared["us_east"]["rows_accepted"] == 3 and shared["asia"]["rows_extracted"] == 0
    assert len(opened) == 2  # the first region's, and a fresh one after europe failed
    assert not (out / ".duckdb-tmp").exists()


# --- small regions sharing a pass ---------------------------------------------------------------


def _day_of(region_dir: Path, files: int = 1, *, clean: bool = False) -> list[Path]:
    """A region's extract in ``files`` files of one schema: accepted rows, a duplicate (the
    same sale_id in every region: regions never deduplicate each other), a reject, a refund and
    a delete (``clean``: two accepted rows only, nothing rejected or retracted)."""
    rows = [
        row(sale_id=1, total_amount=Decimal("20.01")),
        row(sale_id=1, total_amount=Decimal("20.02"), updated_at=T0 + timedelta(hours=1)),
        row(sale_id=2, quantity=3, total_amount=Decimal("30.55"), discount=None),
        row(sale_id=3, total_amount=Decimal("99.99")),  # out of range
        row(sale_id=4, status="Refunded"),
        row(sale_id=5, is_deleted=True),
        row(sale_id=6, customer_id=None),
    ]
    rows = rows[1:3] if clean else rows
    step = -(-len(rows) // files)
    return [
        write_extract(region_dir / f"part-{i:05d}.parquet", rows[i * step : (i + 1) * step])
        for i in range(files)
    ]


def test_small_regions_share_passes_and_match_each_region_alone(
    tmp_path: Path, mixed_extract: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regions of one extract schema share a pass up to pass_rows; every region's counts,
    sums, measures and output rows are what it gets alone. An empty region, a region whose
    files differ in schema (a drifted chunk) and a region larger than pass_rows run alone."""
    kwargs: dict[str, Any] = {"business_date": D, "batch_id": "B", "flow_run_id": "F"}
    extracts = {
        "us_east": _day_of(tmp_path / "x" / "us_east", files=2),
        "us_west": _day_of(tmp_path / "x" / "us_west"),
        "drifted": mixed_extract,
        "apac": [],
        "europe": _day_of(tmp_path / "x" / "europe", files=3),
        "africa": _day_of(tmp_path / "x" / "africa", clean=True),  # no rejects: empty files
    }
    alone_results = {
        r: transform_region(f, region=r, out_dir=tmp_path / "alone", **kwargs)
        for r, f in extracts.items()
    }
    alone = {r: _outcome(res) for r, res in alone_results.items()}
    passes: list[list[str]] = []
    real_pass = transform._run_pass

    def recording_pass(extracts: Any, *args: Any, **kw: Any) -> Any:
        passes.append(list(extracts))
        return real_pass(extracts, *args, **kw)

    monkeypatch.setattr(transform, "_run_pass", recording_pass)
    out = tmp_path / "shared"
    with transform.transform_connection(out, memory_limit="256MB", threads=1) as connection:
        results, errors = transform.transform_regions(
            extracts, out_dir=out, connection=connection, pass_rows=14, **kwargs
        )
    assert errors == {}
    assert {r: _outcome(res) for r, res in results.items()} == alone
    assert list(results) == list(extracts)
    assert passes == [["us_east", "us_west"], ["europe", "africa"], ["drifted"], ["apac"]]
    assert alone["us_east"]["rows_accepted"] == 2 and alone["us_east"]["rows_retracted"] == 2
    assert alone["us_east"]["reasons"]["duplicate"] == 1
    for kind in ("accepted", "rejects", "retractions"):
        assert sorted(p.name for p in (out / kind).iterdir()) == sorted(
            f"region={r}" for r in extracts
        )
    files = ("accepted_files", "reject_files", "retraction_files")
    for region, res in results.items():  # the same files, schemas included
        for kind in files:
            ours, theirs = getattr(res, kind), getattr(alone_results[region], kind)
            assert len(ours) == len(theirs) == 1
            assert pq.read_schema(ours[0]) == pq.read_schema(theirs[0]), (region, kind)


def test_a_region_that_fails_in_a_shared_pass_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region whose rows do not add up in a shared pass sends the pass's regions one by one:
    the others are transformed, the failing region is named with its error, and nothing of it
    is published."""
    kwargs: dict[str, Any] = {"business_date": D, "batch_id": "B", "flow_run_id": "F"}
    extracts = {r: _day_of(tmp_path / "x" / r) for r in ("us_east", "europe", "apac")}
    real_stats = transform._stats

    def lossy_for_europe(*args: Any) -> Any:
        stats = real_stats(*args)
        if "europe" in stats:
            stats["europe"] = dataclasses.replace(stats["europe"], accepted=0)
        return stats

    monkeypatch.setattr(transform, "_stats", lossy_for_europe)
    out = tmp_path / "run"
    with transform.transform_connection(out, memory_limit="256MB", threads=1) as connection:
        results, errors = transform.transform_regions(
            extracts, out_dir=out, connection=connection, **kwargs
        )
    assert list(results) == ["us_east", "apac"]
    assert list(errors) == ["europe"]
    assert isinstance(errors["europe"], ReconciliationError)
    assert str(errors["europe"]).startswith("region europe, 2024-01-15: rows extracted 7")
    assert results["apac"].rows_accepted == 2
    assert not (out / "accepted" / "region=europe").exists()
    assert [p.name for p in out.rglob(".*")] == []
