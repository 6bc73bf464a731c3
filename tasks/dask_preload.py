"""Dask worker preload: pay Prefect's per-process start-up when the worker starts, not in
the first task of a run.

The first Prefect task a fresh process runs rebuilds the flow-run context, whose result store
is a block; resolving a block class makes Prefect import every installed collection once
(prefect-snowflake alone pulls in ``snowflake.core``): ~10 s of CPU per process on this
machine, twice at once on a two-worker cluster. Loaded at start-up
(``dask worker ADDRESS --preload tasks.dask_preload``; the local cluster of
``RETAIL_ETL_TASK_RUNNER=dask`` does it itself), a worker that outlives one run pays it once.
"""

from __future__ import annotations

from typing import Any


def warm_up() -> None:
    """Import what a task of this pipeline needs in a fresh process."""
    from prefect.blocks.core import Block
    from prefect.filesystems import LocalFileSystem

    import flows.etl  # noqa: F401  (the tasks' modules, their dependencies)

    # Resolving a block class by key loads every Prefect collection, once per process.
    Block.get_block_class_from_key(LocalFileSystem.get_block_type_slug())


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, called once when the worker process starts."""
    warm_up()
