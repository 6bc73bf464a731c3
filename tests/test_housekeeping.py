"""Bounded disk: run folders of killed runs, scratch leftovers, staged batches past retention."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from retail_etl.housekeeping import (
    RunDirClaim,
    expire_staged,
    sweep_leftovers,
    sweep_run_dirs,
    sweep_scratch,
)
from retail_etl.locks import FileLock, LockTimeoutError, is_locked
from retail_etl.staging import LocalStagingStore

DAY = date(2024, 1, 15)


def _fill(folder: Path, n_bytes: int = 1000) -> None:
    (folder / "extract").mkdir(parents=True, exist_ok=True)
    (folder / "extract" / "part-0.parquet").write_bytes(b"x" * n_bytes)


def test_a_claimed_run_folder_survives_a_sweep_and_goes_when_released(tmp_path):
    runs = tmp_path / "runs"
    live = RunDirClaim(runs / "2024-01-15" / "20240115_aaaaaaaaaaaa")
    _fill(live.run_dir)
    killed = runs / "2024-01-14" / "20240114_bbbbbbbbbbbb"  # its process is gone
    _fill(killed, 2500)
    (killed / ".active").touch()

    report = sweep_run_dirs(runs)

    assert report.run_dirs == [str(killed)] and report.bytes_freed == 2500
    assert not (runs / "2024-01-14").exists() and live.run_dir.exists()
    live.release()
    assert not (runs / "2024-01-15").exists()


def test_a_run_folder_claimed_by_another_live_process_is_kept(tmp_path):
    run_dir = tmp_path / "runs" / "2024-01-15" / "20240115_cccccccccccc"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from retail_etl.housekeeping import RunDirClaim; "
            "RunDirClaim(Path(sys.argv[1])); print('claimed', flush=True); time.sleep(30)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        assert sweep_run_dirs(tmp_path / "runs").run_dirs == []
        assert run_dir.exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # killed: the kernel dropped its lock, so the next sweep takes the folder
    assert sweep_run_dirs(tmp_path / "runs").run_dirs == [str(run_dir)]


def test_only_old_scratch_folders_are_swept(tmp_path):
    old, fresh = tmp_path / "stage-old", tmp_path / "stage-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "part.parquet").write_bytes(b"y" * 10)
    long_ago = time.time() - 7 * 3600
    os.utime(old, (long_ago, long_ago))
    report = sweep_scratch([tmp_path])
    assert report.scratch_dirs == [str(old)]
    assert fresh.exists() and not old.exists()


def _staged(store, day: date, batch: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.key for f in store.stage_table("rejects", day, "us_east", batch, _rejects())]


def _rejects() -> pa.Table:
    from retail_etl import contract

    return pa.Table.from_pylist([], schema=contract.reject_arrow_schema())


def test_staged_batches_past_retention_are_deleted_locally(tmp_path):
    store = LocalStagingStore(tmp_path / "store")
    old_keys = _staged(store, DAY, "20240115_000000000001")
    new_keys = _staged(store, DAY + timedelta(days=1), "20240116_000000000002")
    month_ago = time.time() - 30 * 86400
    for key in old_keys:
        os.utime(store.local_path(key), (month_ago, month_ago))  # type: ignore[arg-type]

    assert expire_staged(store, 14, dry_run=True).staged_keys == old_keys
    assert [k for k, _ in store.list_modified("")] == sorted(old_keys + new_keys)
    report = expire_staged(store, 14)
    assert report.staged_keys == old_keys
    assert [k for k, _ in store.list_modified("")] == new_keys
    assert expire_staged(store, 0).staged_keys == []  # 0 keeps everything


@pytest.mark.integration
def test_staged_batches_past_retention_are_deleted_on_s3(tmp_path, s3_store):
    keys = _staged(s3_store, DAY, "20240115_000000000003")
    listed = s3_store.list_modified("")
    assert [k for k, _ in listed] == keys
    assert all(abs(datetime.now(UTC) - written) < timedelta(minutes=5) for _, written in listed)
    assert expire_staged(s3_store, 14).staged_keys == []
    later = datetime.now(UTC) + timedelta(days=15)
    assert expire_staged(s3_store, 14, now=later).staged_keys == keys
    assert s3_store.list_modified("") == []
    assert sweep_leftovers(tmp_path / "runs", s3_store, 14).empty


def test_file_lock_waits_reports_the_holder_and_times_out(tmp_path):
    path = tmp_path / "writer.lock"
    first = FileLock(path)
    assert first.try_acquire() and is_locked(path)
    waits: list[str] = []
    with pytest.raises(LockTimeoutError) as raised:
        FileLock(path).acquire(0.3, on_wait=waits.append)
    assert waits == [f"PID {os.getpid()}"] and f"PID {os.getpid()}" in str(raised.value)
    first.release()
    assert not is_locked(path)
    second = FileLock(path)
    second.acquire(0.3)
    assert second.held
    second.release()
