"""Failure injection for the warehouse, through its seam: the dialect runs every statement with
a kind (``merge``, ``ledger``, ``fill_stage``...), so a test makes "the Nth statement of kind
X" fail without touching SQL text or call frames."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import retail_etl.warehouse as warehouse_package
from retail_etl.warehouse.dialect import Dialect, Result, StatementKind


class InjectedFault(RuntimeError):
    """The failure a :class:`FaultPlan` raises instead of running a statement."""


class FaultPlan:
    """Fail statements ``nth .. nth + times - 1`` of ``kind`` (``times=None``: every one from
    ``nth``), counted over every dialect the plan is applied to (a run opens several)."""

    def __init__(
        self,
        kind: StatementKind,
        *,
        nth: int = 1,
        times: int | None = 1,
        message: str = "injected warehouse failure",
        error: Callable[[str], BaseException] = InjectedFault,
    ) -> None:
        """``error``: builds the exception raised (e.g. the engine's own lock-timeout error,
        which the dialect classifies as retryable)."""
        self.kind, self.nth, self.times, self.message = kind, nth, times, message
        self.error = error
        self.seen = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _due(self) -> bool:
        with self._lock:
            self.seen += 1
            due = self.seen >= self.nth and (
                self.times is None or self.seen < self.nth + self.times
            )
            self.failed += due
            return due

    def apply(self, dialect: Dialect) -> Dialect:
        """Route ``dialect``'s statements through the plan (its own internal ones too)."""
        real = dialect.execute

        def execute(
            con: Any, kind: StatementKind, sql_text: str, params: Sequence[Any] = ()
        ) -> Result:
            if kind == self.kind and self._due():
                raise self.error(f"{self.message} ({kind} statement {self.seen})")
            return real(con, kind, sql_text, params)

        dialect.execute = execute  # type: ignore[method-assign]
        return dialect

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FaultPlan:
        """Apply the plan to every warehouse the code under test opens."""
        real = warehouse_package.configured_dialect

        def configured(*args: Any, **kwargs: Any) -> Dialect:
            return self.apply(real(*args, **kwargs))

        monkeypatch.setattr(warehouse_package, "configured_dialect", configured)
        return self


class StatementLog:
    """Record the (kind, statement text) of every statement a dialect runs, through the same
    seam as :class:`FaultPlan` (apply it after any plan, so the log sees what the plan let run)."""

    def __init__(self) -> None:
        self.statements: list[tuple[StatementKind, str]] = []

    def apply(self, dialect: Dialect) -> Dialect:
        real = dialect.execute

        def execute(
            con: Any, kind: StatementKind, sql_text: str, params: Sequence[Any] = ()
        ) -> Result:
            result = real(con, kind, sql_text, params)
            self.statements.append((kind, sql_text))
            return result

        dialect.execute = execute  # type: ignore[method-assign]
        return dialect

    def of_kind(self, kind: StatementKind) -> list[str]:
        """The first word of each statement of ``kind`` that ran (``MERGE``, ``INSERT``...)."""
        return [text.split(None, 1)[0].upper() for k, text in self.statements if k == kind]
