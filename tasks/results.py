"""Collecting mapped task results without letting one failure hide the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect.futures import PrefectFuture


@dataclass
class TaskFailure:
    key: str
    error: str
    attempts: int

    @property
    def message(self) -> str:
        return f"{self.error} (after {self.attempts} attempt(s))"


def _attempts(outcome: object) -> int:
    """Attempts made, as recorded on the exception by the task (see ``tasks.extract``)."""
    return int(getattr(outcome, "attempts", 1))


def collect(
    keys: Sequence[str], futures: Sequence[PrefectFuture[Any]]
) -> tuple[dict[str, Any], dict[str, TaskFailure]]:
    """Wait for every future; return (results by key, failures by key)."""
    results: dict[str, Any] = {}
    failures: dict[str, TaskFailure] = {}
    for key, future in zip(keys, futures, strict=True):
        future.wait()
        state = future.state
        if state.is_completed():
            results[key] = future.result()
            continue
        try:
            outcome = future.result(raise_on_failure=False)
        except Exception as exc:  # the runner lost the task: a Dask worker died, no scheduler
            outcome = exc
        if isinstance(outcome, BaseException):
            error = f"{type(outcome).__name__}: {outcome}"
        else:
            error = state.message or state.name or "failed"
        failures[key] = TaskFailure(key=key, error=error, attempts=_attempts(outcome))
    return results, failures
