"""The Prefect API this process talks to, as Prefect's own settings say (``PREFECT_API_URL``,
environment or profile).

Read here, next to the blocks, so the core (``retail_etl.scaleout``) checks a plain URL and
never imports Prefect: the source-credentials mode, the Dask preflight of the task runner and
the CLI all ask this module.
"""

from __future__ import annotations

from retail_etl.scaleout import TaskRunnerUnavailable, prefect_api_problem
from retail_etl.settings import Settings


def prefect_api_url() -> str | None:
    """The configured Prefect API URL; None for the in-process ephemeral API."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def require_prefect_api(settings: Settings) -> str:
    """The Prefect API URL Dask mode will hand its workers; raises
    :class:`~retail_etl.scaleout.TaskRunnerUnavailable` (saying what to set) if it is unset or
    does not answer."""
    api_url = prefect_api_url()
    problem = prefect_api_problem(api_url, settings.dask_connect_timeout_seconds)
    if problem or not api_url:
        raise TaskRunnerUnavailable(problem)
    return api_url
