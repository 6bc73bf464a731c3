"""Where the per-region and per-split tasks run: local threads (default) or a Dask cluster.

``RETAIL_ETL_TASK_RUNNER=threads|dask`` and ``RETAIL_ETL_DASK_ADDRESS`` are read when a flow
run resolves its runner (not when its module is imported), so one deployment can switch by
environment. The runner is resolved in the flow process only: the parent flow does it when it
starts (:func:`start_task_runner`, before any extraction), subflows on their first submit.
Prefect also re-creates a flow's declared runner on every Dask worker that runs one of its
tasks (to rebuild the flow-run context there); that copy never resolves, because tasks do not
submit tasks, so nothing on a worker ever creates a runner, a client or a cluster.

With ``dask`` and no address, one local cluster of ``RETAIL_ETL_DASK_WORKERS`` processes (on
127.0.0.1) is started by the first flow of the process that needs it and shared by every flow
of the process, then closed at exit. Dask mode first checks that a Prefect API answers, here
and on every worker (``retail_etl.scaleout``).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from blocks.prefect_api import require_prefect_api
from retail_etl.scaleout import TaskRunnerUnavailable, worker_api_problem, workers_problem
from retail_etl.settings import Settings, get_settings

_CLUSTER_LOCK = threading.Lock()
_LOCAL_CLUSTERS: dict[int, Any] = {}


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def local_dask_address(workers: int) -> str:
    """Scheduler address of this process's local Dask cluster (started on first use)."""
    if _in_dask_worker():
        # A worker is a daemonic process: it cannot have children (`Nanny failed to start`).
        raise TaskRunnerUnavailable(
            "a local Dask cluster can only be started in the flow process, not on a Dask worker"
        )
    with _CLUSTER_LOCK:
        cluster = _LOCAL_CLUSTERS.get(workers)
        if cluster is None:
            from distributed import LocalCluster

            try:
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    preload=["tasks.dask_preload"],  # Prefect's start-up, before any task
                )
            except Exception as exc:
                raise TaskRunnerUnavailable(
                    f"the local Dask cluster of {workers} worker(s) could not start "
                    f"(RETAIL_ETL_DASK_WORKERS): {type(exc).__name__}: {exc}"
                ) from exc
            _LOCAL_CLUSTERS[workers] = cluster
            atexit.register(cluster.close)
        return str(cluster.scheduler_address)


def _connect_dask(settings: Settings, api_url: str) -> TaskRunner[Any]:
    """A started ``DaskTaskRunner`` connected to the cluster, whose workers reach the run's
    Prefect API at ``api_url``."""
    from prefect_dask import DaskTaskRunner

    timeout = settings.dask_connect_timeout_seconds
    address = settings.dask_address or local_dask_address(settings.dask_workers)
    runner = DaskTaskRunner(address=address, client_kwargs={"timeout": timeout})
    runner.__enter__()
    try:
        client = runner.client  # connects now, not at the first submit
        if not settings.dask_address:
            client.wait_for_workers(settings.dask_workers, timeout=timeout)
        answers = client.run(worker_api_problem, api_url, timeout)
        problem = workers_problem(address, answers)
    except Exception as exc:
        runner.__exit__(None, None, None)
        raise TaskRunnerUnavailable(
            f"the Dask scheduler at {address} cannot be used (RETAIL_ETL_DASK_ADDRESS): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if problem:
        runner.__exit__(None, None, None)
        raise TaskRunnerUnavailable(problem)
    return runner


def build_task_runner(settings: Settings, max_workers: int) -> TaskRunner[Any]:
    """The started task runner the settings ask for; Dask mode is checked first and raises
    :class:`TaskRunnerUnavailable` naming what is missing."""
    if settings.task_runner == "dask":
        return _connect_dask(settings, require_prefect_api(settings))
    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=max_workers)
    runner.__enter__()
    return runner


class ConfiguredTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """A task runner that becomes threads or Dask (:func:`build_task_runner`) when the flow
    run resolves it (:meth:`resolve`, or the first submit), never on entry: Prefect enters a
    copy on every Dask worker too. Flows declare ``task_runner=ConfiguredTaskRunner(max_workers=N)``."""

    def __init__(self, max_workers: int | None = None) -> None:
        """``max_workers``: threads at once (None: ``RETAIL_ETL_MAX_CONCURRENT_EXTRACTS``)."""
        super().__init__()
        self.max_workers = max_workers
        self._inner: TaskRunner[Any] | None = None
        self._lock = threading.Lock()

    def duplicate(self) -> ConfiguredTaskRunner:
        return type(self)(self.max_workers)

    def __reduce__(self) -> tuple[Any, ...]:
        # Shipped to Dask workers inside the flow: a copy travels unresolved (and lock-free).
        return (type(self), (self.max_workers,))

    def __enter__(self) -> ConfiguredTaskRunner:
        self._started = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        inner, self._inner = self._inner, None
        self._started = False
        if inner is not None:
            inner.__exit__(*exc_info)

    def resolve(self) -> TaskRunner[Any]:
        """The runner in use (threads or Dask), built on first call; raises
        :class:`TaskRunnerUnavailable` if Dask mode cannot start."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        with self._lock:
            if self._inner is None:
                settings = get_settings(fresh=True)
                workers = self.max_workers or settings.max_concurrent_extracts
                self._inner = build_task_runner(settings, workers)
            return self._inner

    @property
    def inner(self) -> TaskRunner[Any] | None:
        """The runner in use once resolved (threads or Dask), else None."""
        return self._inner

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[no-untyped-def, override]
        return self.resolve().submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters, wait_for=None):  # type: ignore[no-untyped-def, override]
        return self.resolve().map(task, parameters, wait_for)


def start_task_runner() -> str | None:
    """Resolve the current flow run's task runner now, in the flow process: None when it is
    ready, else the reason it cannot run tasks (for the run's Failed state and the alert)."""
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if not isinstance(runner, ConfiguredTaskRunner):
        return None
    try:
        runner.resolve()
    except TaskRunnerUnavailable as exc:
        return f"task runner unavailable: {exc}"
    return None
