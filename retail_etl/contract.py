"""The source data contract: the ``sales`` table every region must expose.

One definition feeds the seed generator, extraction, the schema check, the transform
and the warehouses, so a contract change is made here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SOURCE_TABLE = "sales"
NATURAL_KEY: tuple[str, str] = ("region", "sale_id")
#: The ``region`` of a batch-level check result (quality gate, post-load checks, dq_results).
BATCH_REGION = "*"


@dataclass(frozen=True)
class ContractColumn:
    name: str
    pg_type: str  # as information_schema / format_type() reports it
    arrow_type: pa.DataType  # neutral: each warehouse dialect names its own type for it
    critical: bool = False  # NULL rejects the row


SALES_COLUMNS: tuple[ContractColumn, ...] = (
    ContractColumn("sale_id", "bigint", pa.int64(), critical=True),
    ContractColumn("customer_id", "bigint", pa.int64(), critical=True),
    ContractColumn("store_id", "integer", pa.int32(), critical=True),
    ContractColumn("product_id", "integer", pa.int32(), critical=True),
    ContractColumn("quantity", "integer", pa.int32(), critical=True),
    ContractColumn(
        "unit_price",
        "numeric(10,2)",
        pa.decimal128(10, 2),
        critical=True,
    ),
    ContractColumn("discount", "numeric(10,2)", pa.decimal128(10, 2)),
    ContractColumn("tax", "numeric(10,2)", pa.decimal128(10, 2)),
    ContractColumn(
        "total_amount",
        "numeric(12,2)",
        pa.decimal128(12, 2),
        critical=True,
    ),
    ContractColumn("sale_date", "date", pa.date32(), critical=True),
    ContractColumn("status", "text", pa.string()),
    ContractColumn("is_deleted", "boolean", pa.bool_()),
    ContractColumn(
        "created_at",
        "timestamp with time zone",
        pa.timestamp("us", tz="UTC"),
    ),
    ContractColumn(
        "updated_at",
        "timestamp with time zone",
        pa.timestamp("us", tz="UTC"),
    ),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SALES_COLUMNS)
CRITICAL_COLUMNS: tuple[str, ...] = tuple(c.name for c in SALES_COLUMNS if c.critical)
COLUMNS_BY_NAME: dict[str, ContractColumn] = {c.name: c for c in SALES_COLUMNS}

# Columns added by the pipeline to every extracted row.
EXTRAS_COLUMN = "extras"  # JSON object of source columns outside the contract (schema drift)
#: Money columns whose source value was ``NUMERIC 'NaN'``, comma-delimited on both sides
#: (``,discount,tax,``; NULL when none).
#: The typed CSV path cannot carry NaN in a decimal, so the extract sends the value as NULL
#: and names the column here; the transform rejects the row as ``invalid_<column>``.
NAN_COLUMN = "nan_columns"
#: Money columns (``numeric`` in PostgreSQL): the ones that can hold ``NaN``.
MONEY_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in SALES_COLUMNS if c.pg_type.startswith("numeric")
)

#: The one status that makes a sale count (compared trimmed and case-insensitively, by the
#: transform only: ``retail_etl.transform``). Any other status retracts the sale.
COMPLETED_STATUS = "completed"


@dataclass(frozen=True)
class PipelineColumn:
    """A column the pipeline adds (derived metric or lineage); same names in every warehouse."""

    name: str
    arrow_type: pa.DataType
    description: str


# Derived metrics, computed by the transform (documented in README, "Derived metrics").
DERIVED_COLUMNS: tuple[PipelineColumn, ...] = (
    PipelineColumn(
        "gross_amount",
        pa.decimal128(18, 2),
        "quantity x unit_price",
    ),
    PipelineColumn(
        "net_amount",
        pa.decimal128(18, 2),
        "gross_amount - discount",
    ),
    PipelineColumn(
        "effective_discount_rate",
        pa.decimal128(9, 6),
        "discount / gross_amount, rounded to 6 places",
    ),
)

LINEAGE_COLUMNS: tuple[PipelineColumn, ...] = (
    PipelineColumn("batch_id", pa.string(), "the run's batch id"),
    PipelineColumn("flow_run_id", pa.string(), "the Prefect flow run"),
)

# Columns of an accepted (transformed) row, in order: what is staged and COPYed.
ACCEPTED_COLUMNS: tuple[str, ...] = (
    "region",
    *(c for c in COLUMN_NAMES if c != "is_deleted"),
    *(c.name for c in DERIVED_COLUMNS),
    EXTRAS_COLUMN,
    *(c.name for c in LINEAGE_COLUMNS),
)


def accepted_arrow_schema() -> pa.Schema:
    fields = [pa.field("region", pa.string())]
    fields += [pa.field(c.name, c.arrow_type) for c in SALES_COLUMNS if c.name != "is_deleted"]
    fields += [pa.field(c.name, c.arrow_type) for c in DERIVED_COLUMNS]
    fields.append(pa.field(EXTRAS_COLUMN, pa.string()))
    fields += [pa.field(c.name, c.arrow_type) for c in LINEAGE_COLUMNS]
    return pa.schema(fields)


# A rejected row: identity, why, and every raw value as extracted (JSON object of strings).
def reject_arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("region", pa.string()),
            pa.field("sale_id", pa.int64()),  # NULL when the raw value was NULL or not an integer
            pa.field("sale_date", pa.date32()),  # the business date the row was extracted for
            pa.field(
                "reasons", pa.string()
            ),  # sorted, ';'-separated, e.g. "duplicate;null_customer_id"
            pa.field("raw_values", pa.string()),  # JSON object column -> raw value as text
            pa.field("batch_id", pa.string()),
            pa.field("flow_run_id", pa.string()),
        ]
    )


# A retracted sale: the latest version of its key says it no longer counts (refunded,
# cancelled, pending, deleted, any status but completed). The warehouse removes the key from
# ``sales_fact`` and keeps the removed row in ``sales_retractions``.
def retraction_arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("region", pa.string()),
            pa.field("sale_id", pa.int64()),
            pa.field("sale_date", pa.date32()),  # the business date the row was extracted for
            pa.field("reason", pa.string()),  # deleted, status_refunded, status_cancelled, ...
            pa.field("raw_values", pa.string()),  # JSON object column -> raw value as text
            pa.field("batch_id", pa.string()),
            pa.field("flow_run_id", pa.string()),
        ]
    )


def contract_arrow_schema() -> pa.Schema:
    fields = [pa.field(c.name, c.arrow_type) for c in SALES_COLUMNS]
    fields.append(pa.field(EXTRAS_COLUMN, pa.string()))
    return pa.schema(fields)


def extract_arrow_schema() -> pa.Schema:
    """An extract part of a source that matches the contract: the contract's columns,
    ``extras`` and :data:`NAN_COLUMN`."""
    return contract_arrow_schema().append(pa.field(NAN_COLUMN, pa.string()))


def create_table_ddl(table: str = SOURCE_TABLE) -> str:
    """PostgreSQL DDL of the contract table (used by the seed generator and tests)."""
    pg_types = {
        "bigint": "BIGINT",
        "integer": "INT",
        "numeric(10,2)": "NUMERIC(10,2)",
        "numeric(12,2)": "NUMERIC(12,2)",
        "date": "DATE",
        "text": "TEXT",
        "boolean": "BOOLEAN",
        "timestamp with time zone": "TIMESTAMPTZ",
    }
    cols = ",\n    ".join(f"{c.name} {pg_types[c.pg_type]}" for c in SALES_COLUMNS)
    return f"CREATE TABLE {table} (\n    {cols}\n)"
