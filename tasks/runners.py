"""Where the per-region and per-split tasks run: local threads (default) or a Dask cluster.

``RETAIL_ETL_TASK_RUNNER=threads|dask`` and ``RETAIL_ETL_DASK_ADDRESS`` are read when a flow
run starts (not when its module is imported), so one deployment can switch by environment.
With ``dask`` and no address, one local cluster of ``RETAIL_ETL_DASK_WORKERS`` processes (on
127.0.0.1) is started on first use and shared by every flow of the process, then closed at exit.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from retail_etl.settings import Settings, get_settings

_CLUSTER_LOCK = threading.Lock()
_LOCAL_CLUSTERS: dict[int, Any] = {}


def local_dask_address(workers: int) -> str:
    """Scheduler address of this process's local Dask cluster (started on first use)."""
    with _CLUSTER_LOCK:
        cluster = _LOCAL_CLUSTERS.get(workers)
        if cluster is None:
            from distributed import LocalCluster

            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            _LOCAL_CLUSTERS[workers] = cluster
            atexit.register(cluster.close)
        return str(cluster.scheduler_address)


def build_task_runner(settings: Settings, max_workers: int) -> TaskRunner[Any]:
    """The task runner the settings ask for."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        address = settings.dask_address or local_dask_address(settings.dask_workers)
        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=max_workers)


class ConfiguredTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """A task runner that becomes threads or Dask (:func:`build_task_runner`) when its flow
    run starts; flows declare ``task_runner=ConfiguredTaskRunner(max_workers=N)``."""

    def __init__(self, max_workers: int = 8) -> None:
        super().__init__()
        self.max_workers = max_workers
        self._inner: TaskRunner[Any] | None = None

    def duplicate(self) -> ConfiguredTaskRunner:
        return type(self)(self.max_workers)

    def __enter__(self) -> ConfiguredTaskRunner:
        inner = build_task_runner(get_settings(fresh=True), self.max_workers)
        inner.__enter__()
        self._inner = inner
        self._started = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        inner, self._inner = self._inner, None
        self._started = False
        if inner is not None:
            inner.__exit__(*exc_info)

    def _runner(self) -> TaskRunner[Any]:
        if self._inner is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        return self._inner

    @property
    def inner(self) -> TaskRunner[Any] | None:
        """The runner in use while a flow runs (threads or Dask), else None."""
        return self._inner

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[no-untyped-def, override]
        return self._runner().submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters, wait_for=None):  # type: ignore[no-untyped-def, override]
        return self._runner().map(task, parameters, wait_for)
