"""Bounded disk: run directories, scratch leftovers and staged batches past their retention.

A run claims its run directory (``<staging_dir>/runs/<date>/<batch>/``: extract parts and
transform output) with an exclusive ``flock`` on ``.active`` for as long as its process lives,
and removes the directory when it ends. The kernel drops the lock when a process dies, so a
sweep (at the start of every run, or ``retail-etl cleanup``) removes what a killed run left and
never touches a run in progress. Locks are per machine: on a filesystem shared by several
machines (Dask across hosts) only the age-based sweeps are safe.

Staged batches (the parquet a load reads) stay in the store for ``staging_retention_days``
after they were written, so a failed load can be resumed or audited, then go.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retail_etl.locks import FileLock, is_locked
from retail_etl.staging import StagingStore

log = logging.getLogger(__name__)

ACTIVE_MARKER = ".active"
#: Scratch folders of a staging call (``stage-*``) live seconds; older ones are leftovers.
SCRATCH_STALE_AFTER = timedelta(hours=6)


class RunDirClaim:
    """An exclusive claim on one run directory, held until :meth:`release` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(run_dir / ACTIVE_MARKER)
        if not self._lock.try_acquire():
            raise RuntimeError(f"run folder {run_dir} is already claimed by {self._lock.holder()}")

    def release(self, *, remove: bool = True) -> None:
        """Drop the claim; ``remove``: delete the run directory (and an emptied date folder)."""
        if not self._lock.held:
            return
        if remove:
            _remove_tree(self.run_dir)
            _remove_if_empty(self.run_dir.parent)
        self._lock.release()


def _remove_tree(path: Path) -> int:
    """Delete ``path`` (best effort); the bytes it held."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
    shutil.rmtree(path, ignore_errors=True)
    return size


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


@dataclass
class CleanupReport:
    run_dirs: list[str] = field(default_factory=list)
    scratch_dirs: list[str] = field(default_factory=list)
    staged_keys: list[str] = field(default_factory=list)
    stage_tables: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def merge(self, other: CleanupReport) -> None:
        self.run_dirs += other.run_dirs
        self.scratch_dirs += other.scratch_dirs
        self.staged_keys += other.staged_keys
        self.stage_tables += other.stage_tables
        self.bytes_freed += other.bytes_freed

    @property
    def empty(self) -> bool:
        return not (self.run_dirs or self.scratch_dirs or self.staged_keys or self.stage_tables)

    def describe(self, *, dry_run: bool = False) -> str:
        verb = "would remove" if dry_run else "removed"
        return (
            f"{verb} {len(self.run_dirs):,} leftover run folder(s) and "
            f"{len(self.scratch_dirs):,} scratch folder(s) ({self.bytes_freed / 1e6:,.1f} MB), "
            f"{len(self.staged_keys):,} staged file(s) past retention, "
            f"{len(self.stage_tables):,} stale stage table(s)"
        )


def sweep_run_dirs(runs_root: Path, *, dry_run: bool = False) -> CleanupReport:
    """Remove run directories no live process claims (killed or crashed runs)."""
    report = CleanupReport()
    if not runs_root.is_dir():
        return report
    for date_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        for run_dir in sorted(p for p in date_dir.iterdir() if p.is_dir()):
            if is_locked(run_dir / ACTIVE_MARKER):
                continue
            report.run_dirs.append(str(run_dir))
            if dry_run:
                continue
            report.bytes_freed += _remove_tree(run_dir)
        if not dry_run:
            _remove_if_empty(date_dir)
    return report


def sweep_scratch(
    roots: Iterable[Path], *, now: float | None = None, dry_run: bool = False
) -> CleanupReport:
    """Remove ``stage-*`` scratch folders older than :data:`SCRATCH_STALE_AFTER`."""
    report = CleanupReport()
    cutoff = (now if now is not None else time.time()) - SCRATCH_STALE_AFTER.total_seconds()
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.glob("stage-*")):
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                report.scratch_dirs.append(str(folder))
                if not dry_run:
                    report.bytes_freed += _remove_tree(folder)
    return report


def expire_staged(
    store: StagingStore,
    retention_days: int,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> CleanupReport:
    """Delete staged files written more than ``retention_days`` ago (0: keep everything)."""
    report = CleanupReport()
    if retention_days <= 0:
        return report
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    report.staged_keys = [key for key, written in store.list_modified("") if written < cutoff]
    if report.staged_keys and not dry_run:
        store.delete_keys(report.staged_keys)
        log.info(
            "removed %d staged file(s) older than %d days", len(report.staged_keys), retention_days
        )
    return report


def sweep_leftovers(
    runs_root: Path, store: StagingStore, retention_days: int, *, dry_run: bool = False
) -> CleanupReport:
    """Everything a run or ``retail-etl cleanup`` sweeps on disk and in the store."""
    report = sweep_run_dirs(runs_root, dry_run=dry_run)
    report.merge(sweep_scratch([store.scratch_root], dry_run=dry_run))
    report.merge(expire_staged(store, retention_days, dry_run=dry_run))
    return report
