"""Extraction task: one region, one business day, retried with exponential backoff."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.futures import PrefectFuture
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from blocks.sources import SourceBlockError, load_source_url
from retail_etl import humanize, pg, progress
from retail_etl.extract import RegionExtract, combine_splits, extract_region
from retail_etl.run import RunContext, RunSummary
from retail_etl.schema import SchemaContractError
from retail_etl.settings import Settings, get_settings
from tasks.artifacts import publish_table
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
    stats_window: tuple[date, date] | None = None,
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
            stats_window=stats_window,
            deadline_seconds=settings.extract_timeout_seconds,
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
        # No Prefect timeout: in a worker thread it cannot interrupt the COPY (Prefect logs a
        # warning per task saying so); the extraction enforces its own deadline.
    )


def fingerprinted_in_extract(region: str, settings: Settings) -> bool:
    """Whether the region's extraction reads the day's fingerprints in its own snapshot: a
    region extracted in one task. Splits are separate snapshots, so a split region's
    fingerprints are read before its extraction starts (older than any split's rows: a change
    in between is found again by the next check, never missed)."""
    return settings.extract_splits_for(region) == 1


def submit_extracts(
    ctx: RunContext, settings: Settings, stats_start: date
) -> dict[str, list[PrefectFuture[RegionExtract]]]:
    """Submit every region's extraction, in ``settings.extract_splits_for`` tasks each; the
    futures of each region's splits, in split order. How many run at once is the task
    runner's concurrency (threads: ``RETAIL_ETL_MAX_CONCURRENT_EXTRACTS``). A region in one
    task also reads the source's stats of [``stats_start``, run date] in its snapshot
    (:func:`fingerprinted_in_extract`)."""
    extract = configured_extract_task(settings)
    window = (stats_start, ctx.run_date)
    return {
        region: [
            extract.submit(
                region,
                ctx.run_date,
                ctx.extract_dir,
                settings,
                split=k,
                splits=n,
                stats_window=window if fingerprinted_in_extract(region, settings) else None,
            )
            for k in range(n)
        ]
        for region in ctx.regions
        for n in [settings.extract_splits_for(region)]
    }


def landed_batches(
    extracting: Mapping[str, Sequence[PrefectFuture[RegionExtract]]],
    wait_turn: Callable[[], None],
) -> Iterator[list[tuple[str, RegionExtract | TaskFailure]]]:
    """The regions in batches, as they land: wait until at least one more region's last split
    has landed, call ``wait_turn`` (the consumer's previous batch finishing), then yield every
    region landed by then (in the run's order), as its extract or what failed (a region with
    a failed split failed). One region lands alone when the consumer is idle; many small ones
    that landed while it worked come together (one task for them, not one each)."""
    remaining = {region: list(fs) for region, fs in extracting.items()}
    finished: set[UUID] = set()  # task runs of the splits that have landed
    changed = threading.Condition()

    def mark(future: PrefectFuture[RegionExtract]) -> None:
        with changed:
            finished.add(future.task_run_id)
            changed.notify_all()

    def landed() -> list[str]:
        return [r for r, fs in remaining.items() if all(f.task_run_id in finished for f in fs)]

    for future in (f for fs in remaining.values() for f in fs):
        future.add_done_callback(mark)
    while remaining:
        with changed:
            changed.wait_for(landed)
        wait_turn()
        with changed:
            regions = landed()
        batch = []
        for region in regions:
            outcome = region_extract(region, remaining.pop(region))
            if isinstance(outcome, TaskFailure):
                progress.report(region, "extract_failed", detail=outcome.error[:120])
            else:
                progress.report(region, "extracted", detail=humanize.seconds(outcome.seconds))
            batch.append((region, outcome))
        yield batch


def region_extract(
    region: str, splits: Sequence[PrefectFuture[RegionExtract]]
) -> RegionExtract | TaskFailure:
    """A region's extract from its splits' futures (waiting for them), or its failure: the
    first failed split's, or the splits' disagreement."""
    keys = [f"{region}/{k}" for k in range(len(splits))]
    done, failed = collect(keys, splits)
    if failed:
        return failed[min(failed, key=keys.index)]
    try:
        return combine_splits([done[key] for key in keys])
    except Exception as exc:
        return TaskFailure(region, f"{type(exc).__name__}: {exc}", 1)


def collect_extracts(
    extracting: Mapping[str, Sequence[PrefectFuture[RegionExtract]]],
) -> tuple[dict[str, RegionExtract], dict[str, TaskFailure]]:
    """Every region's extract (waiting for the rest), in the run's order; (extracts, failures)."""
    outcomes = {region: region_extract(region, fs) for region, fs in extracting.items()}
    extracts = {r: o for r, o in outcomes.items() if isinstance(o, RegionExtract)}
    failures = {r: o for r, o in outcomes.items() if isinstance(o, TaskFailure)}
    return extracts, failures


def extraction_seconds(
    extracting: Mapping[str, Sequence[PrefectFuture[RegionExtract]]], started: datetime
) -> float:
    """From ``started`` (the first submit) to the last split's final state."""
    ends = [f.state.timestamp for fs in extracting.values() for f in fs]
    return max(0.0, (max(ends, default=started) - started).total_seconds())


def publish_extract_artifact(
    ctx: RunContext, summary: RunSummary, extracts: dict[str, RegionExtract]
) -> None:
    """Per region: rows, bytes, duration, source columns, schema changes, error."""
    publish_table(
        get_settings().artifact_key(f"extract-{ctx.run_date.isoformat()}"),
        [
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
