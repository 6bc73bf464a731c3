"""Schema comparison with the contract (pure), and its history kept in a warehouse."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from retail_etl.contract import SALES_COLUMNS
from retail_etl.schema import SchemaContractError, plan_extraction, record_schema_changes
from retail_etl.staging import LocalStagingStore
from retail_etl.warehouse import Warehouse
from retail_etl.warehouse.dialects.duckdb import DuckDBDialect

CONTRACT = {c.name: c.pg_type for c in SALES_COLUMNS}


def test_matching_source_has_empty_diff_and_stable_fingerprint():
    plan = plan_extraction("us_east", CONTRACT)
    assert plan.diff.is_empty
    reordered = dict(reversed(list(CONTRACT.items())))
    assert plan_extraction("us_east", reordered).fingerprint == plan.fingerprint
    assert plan_extraction("us_east", {**CONTRACT, "x": "text"}).fingerprint != plan.fingerprint


@pytest.mark.parametrize(
    ("column", "source_type", "cast"),
    [
        ("quantity", "text", True),
        ("quantity", "bigint", True),
        ("unit_price", "integer", True),
        ("unit_price", "numeric(12,2)", True),
        ("store_id", "character varying(20)", True),
        ("created_at", "timestamp without time zone", True),
    ],
)
def test_castable_type_changes_are_cast_in_the_transform(column, source_type, cast):
    plan = plan_extraction("europe", {**CONTRACT, column: source_type})
    assert plan.column(column).cast_in_transform is cast
    assert plan.diff.retyped == {column: (CONTRACT[column], source_type)}


@pytest.mark.parametrize(
    ("column", "source_type"),
    [
        ("unit_price", "numeric(12,4)"),
        ("total_amount", "double precision"),
        ("discount", "numeric"),
        ("quantity", "numeric(10,2)"),
        ("customer_id", "real"),
    ],
)
def test_lossy_type_changes_stop_the_region_naming_the_column(column, source_type):
    with pytest.raises(
        SchemaContractError, match=rf"region apac: column {column} .* {re.escape(source_type)}"
    ):
        plan_extraction("apac", {**CONTRACT, column: source_type})


def test_alias_resolves_a_rename_and_reports_it():
    source = {("customer_uuid" if k == "customer_id" else k): v for k, v in CONTRACT.items()}
    plan = plan_extraction("us_west", source, aliases={"customer_id": ["customer_uuid"]})
    assert plan.column("customer_id").source_name == "customer_uuid"
    assert plan.diff.renamed == {"customer_id": "customer_uuid"}
    assert plan.extra_columns == ()


def test_missing_column_names_the_aliases_tried():
    source = {k: v for k, v in CONTRACT.items() if k != "customer_id"}
    with pytest.raises(
        SchemaContractError, match="customer_id \\(nor its aliases customer_uuid\\)"
    ):
        plan_extraction("us_west", source, aliases={"customer_id": ["customer_uuid"]})


def test_new_columns_are_listed_as_extras():
    plan = plan_extraction("us_east", {**CONTRACT, "channel": "text"})
    assert plan.extra_columns == ("channel",)
    assert plan.diff.describe() == "new column channel (text)"


@dataclass
class _Seen:
    source_columns: dict[str, str]
    schema_fingerprint: str
    schema_changes: str


def _seen(source: dict[str, str]) -> _Seen:
    plan = plan_extraction("x", source)
    return _Seen(plan.source_columns, plan.fingerprint, plan.diff.describe())


def test_a_schema_change_is_warned_about_once_and_a_matching_schema_never(tmp_path: Path) -> None:
    store = LocalStagingStore(tmp_path / "staging")
    history = Warehouse(DuckDBDialect(tmp_path / "wh.duckdb", store), store)
    history.ensure_schema()
    drifted = {"us_east": _seen({**CONTRACT, "channel": "text"}), "europe": _seen(CONTRACT)}

    first = record_schema_changes(history, drifted, batch_id="b1", flow_run_id="f1")
    again = record_schema_changes(history, drifted, batch_id="b2", flow_run_id="f2")
    back = record_schema_changes(
        history, {"us_east": _seen(CONTRACT)}, batch_id="b3", flow_run_id="f3"
    )

    assert first == [
        f"us_east: source schema changed (fingerprint {drifted['us_east'].schema_fingerprint}): "
        "new column channel (text)"
    ]
    assert again == [] and back == []
    assert [(h["region"], h["first_seen_batch_id"]) for h in history.schema_history()] == [
        ("europe", "b1"),
        ("us_east", "b1"),
        ("us_east", "b3"),
    ]
