"""Artifacts are created by a background thread (tasks/artifacts.py): each belongs to the run
it was published in, a subflow does not wait for its own, and the outermost flow returns only
once all of them exist. A failing API is reported, not raised."""

from __future__ import annotations

import pytest

from tests.pipeline import flow_run_artifacts
from tests.plumbing import free_port

pytestmark = pytest.mark.integration


def test_every_artifact_of_a_run_exists_when_its_outermost_flow_returns(prefect_api, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    import tasks.artifacts as artifacts
    from tasks.artifacts import flush_if_outermost, publish_markdown, publish_table

    child_ids: list[str] = []
    flushed_by: list[str] = []  # the flow runs that waited for the queue
    real_flush = artifacts.flush

    def recording_flush(timeout: float = artifacts.FLUSH_TIMEOUT_SECONDS) -> list[str]:
        flushed_by.append(flow_run.get_id())
        return real_flush(timeout)

    monkeypatch.setattr(artifacts, "flush", recording_flush)

    @flow(name="artifact-child")
    def child() -> None:
        child_ids.append(flow_run.get_id())
        publish_table("child-table", [{"region": "us_east", "rows": "3"}], description="rows")
        flush_if_outermost()  # a subflow: leaves the wait to its parent

    @flow(name="artifact-parent")
    def parent() -> None:
        child()
        publish_markdown("parent-summary", "## done", description="the summary")
        publish_markdown("parent-summary", "## done, twice")
        flush_if_outermost()

    state = parent(return_state=True)

    assert state.is_completed()
    assert flushed_by == [str(state.state_details.flow_run_id)]  # the parent only
    with get_client(sync_client=True) as client:
        parent_artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    # both versions, created in the order they were published
    assert [(a.key, a.data) for a in parent_artifacts] == [
        ("parent-summary", "## done, twice"),
        ("parent-summary", "## done"),
    ]
    child_artifacts = flow_run_artifacts(child_ids[0])
    assert set(child_artifacts) == {"child-table"}
    table = child_artifacts["child-table"]
    assert table.type == "table" and table.description == "rows"
    assert '"region": "us_east"' in table.data


def test_an_api_that_refuses_is_reported_by_flush_not_raised():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.artifacts import flush, publish_table

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        publish_table("load-2024-01-15", [{"region": "us_east"}])
    failures = flush(timeout=30)

    assert len(failures) == 1
    assert failures[0].startswith("artifact 'load-2024-01-15':")
    assert flush(timeout=1) == []  # reported once


def test_publishing_does_not_wait_for_the_api_and_keeps_the_call_order():
    """Through the publisher's seam (its ``create``): a slow API holds the queue, not the
    caller; flush waits, then says what is still queued; a failure is scrubbed."""
    import threading

    from prefect.artifacts import MarkdownArtifact

    from tasks.artifacts import Publisher

    release = threading.Event()
    created: list[str] = []

    def slow_create(request) -> None:  # type: ignore[no-untyped-def]
        release.wait(30)
        if request.key == "refused":
            raise RuntimeError("postgresql://etl:hunter2@db/sales refused")
        created.append(request.key)

    publisher = Publisher(create=slow_create)
    for key in ("first", "refused", "second"):
        publisher.put(MarkdownArtifact(key=key, markdown=f"# {key}"))

    assert created == []  # every put returned while the API was still busy
    assert publisher.flush(timeout=0.2) == ["3 artifact(s) still queued after 0.2 s"]
    release.set()
    failures = publisher.flush(timeout=30)
    assert created == ["first", "second"]
    assert failures == ["artifact 'refused': postgresql://etl:***@db/sales refused"]
