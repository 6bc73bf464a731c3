"""Thin task over the warehouse's source schema history (see README, "Schema changes")."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retail_etl.extract import RegionExtract
from retail_etl.run import RunContext
from retail_etl.schema import record_schema_changes
from retail_etl.warehouse import Warehouse, WarehouseError


@task(name="record-source-schemas", cache_policy=NO_CACHE)
def record_schemas_task(
    warehouse: Warehouse, extracts: Mapping[str, RegionExtract], ctx: RunContext
) -> list[str]:
    """Record each extracted region's schema fingerprint; return the warnings (new changes).

    A warehouse that cannot be written to is logged and yields no warning: the change stays
    unrecorded, so the next run that reaches the warehouse reports it.
    """
    logger = get_run_logger()
    try:
        with warehouse.session():  # one connection for every region's fingerprint
            warnings = record_schema_changes(
                warehouse, extracts, batch_id=ctx.batch_id, flow_run_id=ctx.flow_run_id
            )
    except WarehouseError as exc:
        logger.warning("Source schema history not recorded for batch %s: %s", ctx.batch_id, exc)
        return []
    for warning in warnings:
        logger.warning("Schema change: %s", warning)
    return warnings
