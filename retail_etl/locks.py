"""Process locks on files (``flock``): held while the process lives, dropped by the kernel when
it dies (a SIGKILL included), so a killed run never leaves a lock behind. Per machine: on a
filesystem shared by several hosts they are not a guarantee.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeoutError(TimeoutError):
    """The lock stayed held by another process for longer than the bound."""


class FileLock:
    """An exclusive lock on ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no other holder has it; never waits."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the waiters' log line
        self._fd = fd
        return True

    def acquire(self, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait for the lock, at most ``timeout_s``; ``on_wait(holder)`` once if it must wait."""
        deadline = time.monotonic() + timeout_s
        pause = 0.1
        warned = False
        while not self.try_acquire():
            if time.monotonic() + pause > deadline:
                raise LockTimeoutError(
                    f"{self.path} stayed locked by {self.holder()} for {timeout_s:.0f} s"
                )
            if not warned and on_wait is not None:
                on_wait(self.holder())
                warned = True
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"PID {pid}" if pid else "another process"


def is_locked(path: Path) -> bool:
    """Whether a live process holds the lock on ``path`` (a missing file: no)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the lock the probe may have taken, writes nothing
    return False


@contextmanager
def holding(
    path: Path, timeout_s: float, on_wait: Callable[[str], None] | None = None
) -> Iterator[FileLock]:
    lock = FileLock(path)
    lock.acquire(timeout_s, on_wait)
    try:
        yield lock
    finally:
        lock.release()
