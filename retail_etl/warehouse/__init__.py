"""Warehouses: DuckDB (embedded default) and Snowflake, same tables and MERGE semantics.

Importing this package loads only :mod:`retail_etl.warehouse.base` (no engine drivers);
:func:`open_warehouse` imports the engine it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retail_etl.warehouse.base import (
    LEDGER_STATUSES,
    CheckResult,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    TransformCounts,
    Warehouse,
    WarehouseError,
    WarehouseLoadError,
    merge_checks,
)

if TYPE_CHECKING:
    from retail_etl.settings import Settings
    from retail_etl.staging import StagingStore

__all__ = [
    "LEDGER_STATUSES",
    "CheckResult",
    "LedgerEntry",
    "MergeResult",
    "RegionLoad",
    "TransformCounts",
    "Warehouse",
    "WarehouseError",
    "WarehouseLoadError",
    "merge_checks",
    "open_warehouse",
]


def open_warehouse(
    settings: Settings,
    store: StagingStore,
    *,
    snowflake_connector: Any = None,
    s3_bucket: Any = None,
) -> Warehouse:
    """The configured warehouse (``settings.warehouse``).

    DuckDB needs nothing else. Snowflake needs the prefect-snowflake ``SnowflakeConnector``
    block and the prefect-aws ``S3Bucket`` block of the staging store (for the stage URL and
    its credentials).
    """
    if settings.warehouse == "duckdb":
        from retail_etl.warehouse.duckdb_warehouse import DuckDBWarehouse

        return DuckDBWarehouse.from_settings(settings, store)
    from retail_etl.warehouse.snowflake_warehouse import SnowflakeWarehouse

    if snowflake_connector is None or s3_bucket is None:
        raise ValueError(
            "the Snowflake warehouse needs the SnowflakeConnector block "
            f"({settings.snowflake_block!r}) and the S3Bucket block ({settings.s3_bucket_block!r})"
        )
    return SnowflakeWarehouse.from_blocks(snowflake_connector, s3_bucket, store)
