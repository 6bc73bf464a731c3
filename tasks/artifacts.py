"""Artifacts created off the run's critical path.

Creating an artifact is one API round trip: 40-110 ms against a quiet server on the 2-core
bench machine, up to 0.4 s while the server is still taking in the run's task events, and a
daily run's five sat between its stages. :func:`publish_markdown` and :func:`publish_table`
queue the artifact instead, with the flow and task run it belongs to (taken at the call) and
the Prefect settings in force there (the API it goes to); one background thread creates them
in call order. :func:`flush` waits for the queue; every flow that publishes ends with
:func:`flush_if_outermost`, so a run's artifacts all exist when its outermost flow's final
state does (a subflow's own wait would put the round trips back between the stages), and the
process flushes once more at exit.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.artifacts import Artifact, MarkdownArtifact, TableArtifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL
from prefect.utilities.context import get_task_and_flow_run_ids

from retail_etl.redact import scrub_secrets

logger = logging.getLogger(__name__)

#: How long :func:`flush` waits for the queue before it reports what is left as unpublished.
FLUSH_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class _Pending:
    request: ArtifactCreate
    context: contextvars.Context  # the caller's: its Prefect settings say which API


class Publisher:
    """One daemon thread creating queued artifacts in order with ``create`` (default: a
    Prefect client per API)."""

    def __init__(self, create: Callable[[ArtifactCreate], None] | None = None) -> None:
        self._create = create or self._create_with_client
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._failures: list[str] = []
        self._thread: threading.Thread | None = None
        self._clients: dict[tuple[str | None, str | None], SyncPrefectClient] = {}

    def put(self, artifact: Artifact) -> None:
        task_run_id, flow_run_id = get_task_and_flow_run_ids()
        request = ArtifactCreate(
            type=artifact.type,
            key=artifact.key,
            description=artifact.description,
            task_run_id=task_run_id,
            flow_run_id=flow_run_id,
            data=artifact.format(_sync=True),  # type: ignore[call-arg]  # now: a snapshot
        )
        with self._lock:
            self._unfinished += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="retail-etl-artifacts", daemon=True
                )
                self._thread.start()
        self._queue.put(_Pending(request, contextvars.copy_context()))

    def flush(self, timeout: float) -> list[str]:
        """Wait until every queued artifact is created (or ``timeout`` passes); the failures
        since the last flush, and one line for those still queued."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            failures, self._failures = self._failures, []
            if self._unfinished:
                failures.append(f"{self._unfinished} artifact(s) still queued after {timeout:g} s")
        return failures

    def _work(self) -> None:
        while True:
            pending = self._queue.get()
            failure = None
            try:
                pending.context.run(self._create, pending.request)
            except Exception as exc:  # reported by flush(); the run goes on
                failure = scrub_secrets(f"artifact {pending.request.key!r}: {exc}")
                logger.warning("Could not create %s", failure)
            finally:
                with self._idle:
                    if failure is not None:
                        self._failures.append(failure)
                    self._unfinished -= 1
                    self._idle.notify_all()

    def _create_with_client(self, request: ArtifactCreate) -> None:
        api = (PREFECT_API_URL.value(), PREFECT_API_KEY.value())
        client = self._clients.get(api)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            self._clients[api] = client
        client.create_artifact(artifact=request)


_publisher = Publisher()
atexit.register(_publisher.flush, FLUSH_TIMEOUT_SECONDS)


def publish_markdown(key: str, markdown: str, description: str | None = None) -> None:
    """Queue a markdown artifact of the current flow or task run."""
    _publisher.put(MarkdownArtifact(key=key, markdown=markdown, description=description))


def publish_table(key: str, table: list[dict[str, Any]], description: str | None = None) -> None:
    """Queue a table artifact (one dict per row) of the current flow or task run."""
    _publisher.put(TableArtifact(key=key, table=table, description=description))


def flush(timeout: float = FLUSH_TIMEOUT_SECONDS) -> list[str]:
    """Wait for every queued artifact; what could not be created (secrets scrubbed), each
    also logged as a warning of the current flow run."""
    failures = _publisher.flush(timeout)
    if failures:
        try:
            run_logger: Any = get_run_logger()
        except MissingContextError:
            run_logger = logger
        for failure in failures:
            run_logger.warning("Artifact not published: %s", failure)
    return failures


def flush_if_outermost() -> None:
    """:func:`flush` when the current flow run is not a subflow (its parent flushes; a run
    whose parent is in another process, e.g. started by ``run_deployment``, flushes at exit)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.parent_task_run_id is None:
        flush()
