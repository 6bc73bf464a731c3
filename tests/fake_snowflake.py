"""fakesnow plus the account-level statements it does not implement, with a statement log.

fakesnow runs Snowflake SQL on DuckDB but rejects ``ALTER SESSION`` and ``ALTER WAREHOUSE``
and shows one fixed warehouse. :class:`FakeSnowflake` is the connection factory the tests
give the Snowflake dialect: every statement goes into :attr:`FakeSnowflake.statements` (the
seam tests assert on), the session and warehouse statements are answered from a small model
of the account (session parameters per connection, warehouse sizes), the rest go to fakesnow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_ALTER_SESSION = re.compile(r"^ALTER SESSION (?P<verb>SET|UNSET) (?P<rest>.*)$", re.S)
_ALTER_WAREHOUSE = re.compile(r'^ALTER WAREHOUSE "(?P<name>[A-Z0-9_]+)" SET WAREHOUSE_SIZE = %s$')
_SHOW_WAREHOUSES = "SHOW WAREHOUSES LIKE %s"
_USE_WAREHOUSE = re.compile(r'^USE WAREHOUSE "(?P<name>[A-Z0-9_]+)"$')


class _Cursor:
    def __init__(self, fake: FakeSnowflake, conn: _Connection) -> None:
        self._fake, self._conn = fake, conn
        self._real = conn.real.cursor()
        self._rows: list[tuple[Any, ...]] | None = None
        self.description: Any = None

    def execute(self, text: str, params: Any = None) -> _Cursor:
        self._fake.statements.append((text, params))
        self._rows = None
        answered = self._answer(text, list(params or []))
        if answered is None:
            self._real.execute(text, params)
            self.description = self._real.description
        return self

    def _answer(self, text: str, params: list[Any]) -> list[tuple[Any, ...]] | None:
        if found := _ALTER_SESSION.match(text):
            names = re.findall(r"([A-Z_]+)\s*(?:=\s*%s)?", found["rest"])
            if found["verb"] == "SET":
                self._conn.session_parameters.update(zip(names, params, strict=True))
            else:
                for name in names:
                    self._conn.session_parameters.pop(name, None)
            self._fake.check(text, params)
            return self._done([])
        if found := _ALTER_WAREHOUSE.match(text):
            self._fake.check(text, params)
            self._fake.warehouses[found["name"]] = str(params[0])
            return self._done([])
        if found := _USE_WAREHOUSE.match(text):
            self._conn.warehouse = found["name"]
            return self._done([])
        if text == _SHOW_WAREHOUSES:
            self.description = [("name",), ("size",)]
            rows = [(n, s) for n, s in self._fake.warehouses.items() if n == params[0]]
            self._rows = rows
            return rows
        return None

    def _done(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        self.description = None
        self._rows = rows
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._rows is not None:
            return self._rows
        return list(self._real.fetchall())

    def executemany(self, text: str, rows: Any) -> Any:
        self._fake.statements.append((text, "executemany"))
        return self._real.executemany(text, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Connection:
    def __init__(self, fake: FakeSnowflake, real: Any) -> None:
        self._fake, self.real = fake, real
        self.session_parameters: dict[str, Any] = {}
        self.warehouse: str | None = None

    def cursor(self) -> _Cursor:
        return _Cursor(self._fake, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


class FakeSnowflake:
    """Connection factory over fakesnow (inside ``fakesnow.patch()``); see the module doc.

    ``warehouses``: name -> size as ``SHOW WAREHOUSES`` reports it. ``fail_on``: a predicate
    (statement, params) -> an exception to raise for an account statement (e.g. the resize
    back), the seam for failures fakesnow cannot produce.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self.statements: list[tuple[str, Any]] = []
        self.warehouses: dict[str, str] = {"ETL_WH": "X-SMALL", "LOAD_WH": "MEDIUM"}
        self.fail_on: Callable[[str, list[Any]], BaseException | None] = lambda t, p: None

    def __call__(self) -> _Connection:
        return _Connection(self, self._connect())

    def check(self, text: str, params: list[Any]) -> None:
        error = self.fail_on(text, params)
        if error is not None:
            raise error

    def sent(self, prefix: str) -> list[tuple[str, Any]]:
        """The statements sent that start with ``prefix``, in order."""
        return [(t, p) for t, p in self.statements if t.startswith(prefix)]
