"""What Dask mode needs before a run may start, checked in plain functions.

Tasks that run on a Dask worker report their state to the Prefect API themselves, using the
settings the flow process ships with every task. A flow process on the ephemeral API (no
``PREFECT_API_URL``) has no address to ship, so every worker tries to start a temporary
server of its own and the run fails in the middle (``Server process did not start``). These
checks turn that into one clear error before any extraction: the run's API must be set and
answer ``/health``, here and from every worker. They take the API URL as a value; reading it
from Prefect's settings is ``blocks.prefect_api.require_prefect_api``, called where the run
starts (``retail-etl run``/``backfill``, and the flow process when it resolves its task
runner, see ``tasks/runners.py``); :func:`worker_api_problem` runs on each worker.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

SERVER_HINT = (
    "start a Prefect server (`prefect server start --host 127.0.0.1`) and set "
    "PREFECT_API_URL=http://127.0.0.1:4200/api in the environment of the run and of every "
    "Dask worker, or use RETAIL_ETL_TASK_RUNNER=threads"
)


class TaskRunnerUnavailable(RuntimeError):
    """The task runner the settings ask for cannot run this flow's tasks (Dask: no Prefect
    API the workers can reach, no scheduler at the address, no workers, a cluster that cannot
    start). The message names the cause and what to set."""


def prefect_api_problem(
    api_url: str | None, timeout: float, *, where: str = "the run"
) -> str | None:
    """None if ``api_url`` answers ``/health``; otherwise why Dask mode cannot use it."""
    if not api_url:
        return (
            f"RETAIL_ETL_TASK_RUNNER=dask needs a Prefect API that the Dask workers can reach, "
            f"and PREFECT_API_URL is not set for {where}: {SERVER_HINT}"
        )
    health = api_url.rstrip("/") + "/health"
    try:
        response = httpx.get(health, timeout=timeout)
    except httpx.HTTPError as exc:
        return (
            f"RETAIL_ETL_TASK_RUNNER=dask needs a Prefect API that the Dask workers can reach, "
            f"and the PREFECT_API_URL of {where} ({api_url}) does not answer {health}: "
            f"{type(exc).__name__}: {exc}; {SERVER_HINT}"
        )
    if response.status_code != 200:
        return (
            f"RETAIL_ETL_TASK_RUNNER=dask needs a Prefect API that the Dask workers can reach, "
            f"and {health} (PREFECT_API_URL of {where}) answered HTTP {response.status_code}; "
            f"{SERVER_HINT}"
        )
    return None


def worker_api_problem(api_url: str, timeout: float) -> str | None:
    """Run on a Dask worker: can it reach the run's Prefect API? (The flow's settings travel
    with every task, so a task on a worker reports to the API the flow process uses.)"""
    import socket

    problem = prefect_api_problem(api_url, timeout, where=f"the run, from {socket.gethostname()}")
    if problem is None:
        return None
    return (
        f"cannot reach the run's Prefect API at {api_url}: set PREFECT_API_URL to an address "
        f"every Dask worker can reach (not 127.0.0.1 when they run on other machines) ({problem})"
    )


def workers_problem(address: str, answers: Mapping[str, str | None]) -> str | None:
    """None if there is a worker and every worker reached the Prefect API; else the causes."""
    if not answers:
        return f"the Dask cluster at {address} has no workers: start `dask worker {address}`"
    by_answer: dict[str, list[str]] = {}
    for worker, answer in sorted(answers.items()):
        if answer:
            by_answer.setdefault(answer, []).append(worker)
    if not by_answer:
        return None
    return "; ".join(
        f"Dask worker(s) {', '.join(workers)}: {answer}" for answer, workers in by_answer.items()
    )
