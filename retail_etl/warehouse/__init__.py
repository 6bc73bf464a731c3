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
) -> Warehouse:
    """The configured warehouse (``settings.warehouse``).

    DuckDB needs nothing else. Snowflake needs the prefect-snowflake ``SnowflakeConnector``
    block and the S3 staging store (the stage points at its root).
    """
    if settings.warehouse == "duckdb":
        from retail_etl.warehouse.duckdb_warehouse import DuckDBWarehouse

        return DuckDBWarehouse.from_settings(settings, store)
    from retail_etl.warehouse.snowflake_warehouse import SnowflakeWarehouse

    if snowflake_connector is None:
        raise ValueError(
            f"the Snowflake warehouse needs the SnowflakeConnector block ({settings.snowflake_block!r})"
        )
    return SnowflakeWarehouse.from_blocks(
        snowflake_connector,
        store,
        storage_integration=settings.snowflake_storage_integration,
        login_timeout_s=settings.snowflake_login_timeout_seconds,
        statement_timeout_s=settings.snowflake_statement_timeout_seconds,
    )
