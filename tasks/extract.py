"""Extraction task: one region, one business day, retried with exponential backoff."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from blocks.sources import SourceBlockError, load_source_url
from retail_etl import humanize, pg, progress
from retail_etl.extract import RegionExtract, combine_splits, extract_region
from retail_etl.run import RunContext, RunSummary
from retail_etl.schema import SchemaContractError
from retail_etl.settings import Settings, get_settings
from tasks.results import TaskFailure, collect


def _retry_unless_contract_error(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Retry I/O failures; a schema that breaks the contract, or a missing source block, will
    not fix itself in minutes."""
    try:
        state.result()
    except (SchemaContractError, SourceBlockError):
        return False
    except Exception:
        return True
    return False


@task(name="extract-region", task_run_name="extract-{region}-{business_date}-{split}")
def extract_region_task(
    region: str,
    business_date: date,
    extract_dir: Path,
    settings: Settings,
    split: int = 0,
    splits: int = 1,
) -> RegionExtract:
    logger = get_run_logger()
    try:
        source_url, origin = load_source_url(region, settings)
        bounded_url = pg.with_session_bounds(
            source_url.get_secret_value(),
            connect_timeout_s=settings.source_connect_timeout_seconds,
            statement_timeout_s=settings.source_statement_timeout_seconds,
            keepalive_idle_s=settings.source_keepalive_idle_seconds,
        )
        logger.info(
            "Extracting region %s for %s, split %d/%d (credentials from %s)",
            region,
            business_date,
            split + 1,
            splits,
            origin,
        )
        if split == 0:
            progress.report(region, "source", detail=origin)
        progress.report(region, "extracting", rows=0, split=split)
        result = extract_region(
            bounded_url,
            region,
            business_date,
            extract_dir,
            chunk_rows=settings.chunk_rows,
            aliases=settings.column_aliases_for(region),
            split=split,
            splits=splits,
            on_rows=lambda rows: progress.report(region, "extracting", rows=rows, split=split),
        )
    except Exception as exc:
        # The API records task-run history asynchronously; carry the count on the error.
        exc.attempts = task_run.run_count  # type: ignore[attr-defined]
        raise
    logger.info(
        "Region %s: %s rows, %s in %.2f s (%s)",
        region,
        humanize.count(result.rows),
        humanize.size(result.bytes),
        result.seconds,
        result.schema_changes,
    )
    progress.report(region, "extracting", rows=result.rows, split=split)
    return result


def configured_extract_task(settings: Settings):  # type: ignore[no-untyped-def]
    """The extraction task with retry count and backoff taken from settings."""
    return extract_region_task.with_options(
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_base_seconds)
        if settings.retry_base_seconds > 0
        else 0,
        retry_jitter_factor=settings.retry_jitter_factor,
        retry_condition_fn=_retry_unless_contract_error,
        timeout_seconds=settings.extract_timeout_seconds,
    )


def extract_regions(
    ctx: RunContext,
    settings: Settings,
    on_extracted: Callable[[str, RegionExtract], None] | None = None,
) -> tuple[dict[str, RegionExtract], dict[str, TaskFailure]]:
    """Extract every region of the run concurrently, each in ``settings.extract_splits_for``
    tasks; (extracts by region, failures by region). A region with a failed split failed.

    ``on_extracted(region, extract)`` is called (in this thread) as soon as a region's last
    split lands, so the next step can start on it while other regions are still extracting.
    """
    extract = configured_extract_task(settings)
    queue = [
        (r, k, n) for r in ctx.regions for n in [settings.extract_splits_for(r)] for k in range(n)
    ]
    keys: dict[int, str] = {}
    running: list[PrefectFuture[Any]] = []

    def submit_next() -> None:
        region, k, n = queue.pop(0)
        future = extract.submit(region, ctx.run_date, ctx.extract_dir, settings, split=k, splits=n)
        keys[id(future)] = f"{region}/{k}"
        running.append(future)

    # At most max_concurrent_extracts at once (the rest start as these finish).
    while queue and len(running) < settings.max_concurrent_extracts:
        submit_next()
    waiting = {region: settings.extract_splits_for(region) for region in ctx.regions}
    landed: dict[str, list[PrefectFuture[Any]]] = {region: [] for region in ctx.regions}
    extracts: dict[str, RegionExtract] = {}
    failures: dict[str, TaskFailure] = {}
    while running:
        future = next(as_completed(running))
        running.remove(future)
        if queue:
            submit_next()
        region = keys[id(future)].split("/")[0]
        landed[region].append(future)
        waiting[region] -= 1
        if waiting[region]:
            continue
        ordered = sorted(landed[region], key=lambda f: keys[id(f)])
        done, failed = collect([keys[id(f)] for f in ordered], ordered)
        if failed:
            failures[region] = failed[min(failed)]
            progress.report(region, "extract_failed", detail=failures[region].error[:120])
            continue
        try:
            extracts[region] = combine_splits([done[key] for key in sorted(done, key=_split_no)])
        except Exception as exc:
            failures[region] = TaskFailure(region, f"{type(exc).__name__}: {exc}", 1)
            continue
        progress.report(region, "extracted", detail=humanize.seconds(extracts[region].seconds))
        if on_extracted is not None:
            on_extracted(region, extracts[region])
    # regions in the run's order, whatever order they landed in
    ordered_extracts = {r: extracts[r] for r in ctx.regions if r in extracts}
    return ordered_extracts, {r: failures[r] for r in ctx.regions if r in failures}


class ExtractionThread(threading.Thread):
    """Runs :func:`extract_regions` beside the flow's main thread (inside the flow run's
    context, so its tasks belong to the parent flow run), feeding each landed region to
    ``feed`` and closing it at the end, whatever happens."""

    def __init__(self, ctx: RunContext, settings: Settings, feed: Any) -> None:
        super().__init__(name="extract-regions", daemon=True)
        self._context = contextvars.copy_context()
        self._args = (ctx, settings, feed)
        self._outcome: tuple[dict[str, RegionExtract], dict[str, TaskFailure]] | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        ctx, settings, feed = self._args
        started = time.perf_counter()
        try:
            self._outcome = self._context.run(extract_regions, ctx, settings, feed.put)
        except BaseException as exc:  # re-raised in the flow's thread by result()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - started
            feed.close()

    def result(self) -> tuple[dict[str, RegionExtract], dict[str, TaskFailure]]:
        self.join()
        if self._error is not None:
            raise self._error
        if self._outcome is None:  # pragma: no cover - run() always sets one of the two
            raise RuntimeError("extraction thread ended without a result")
        return self._outcome


def _split_no(key: str) -> int:
    return int(key.split("/")[1])


def publish_extract_artifact(
    ctx: RunContext, summary: RunSummary, extracts: dict[str, RegionExtract]
) -> None:
    """Per region: rows, bytes, duration, source columns, schema changes, error."""
    create_table_artifact(
        key=get_settings().artifact_key(f"extract-{ctx.run_date.isoformat()}"),
        table=[
            {
                "region": region,
                "status": summary.regions[region].status,
                "rows": humanize.count(result.rows) if result else "0",
                "size": humanize.size(result.bytes) if result else "-",
                "seconds": humanize.seconds(result.seconds) if result else "-",
                "error": summary.regions[region].error or "",
                "schema_changes": result.schema_changes if result else "",
                "schema_fingerprint": result.schema_fingerprint if result else "",
                "source_columns": ", ".join(result.source_columns) if result else "",
            }
            for region in ctx.regions
            for result in [extracts.get(region)]
        ],
        description=f"Extraction of {ctx.run_date} (batch {ctx.batch_id})",
    )
