"""A real ``prefect server`` on 127.0.0.1 for the tests that need one (marked ``server``):
one per session (start-up ~10-20 s), with its own PREFECT_HOME; clients are subprocesses
whose environment points PREFECT_API_URL at it (``PrefectServer.env``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.plumbing import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 90
COMMAND_TIMEOUT_S = 180


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a client process talking to this server."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "RETAIL_ETL_")) or k == "RETAIL_ETL_TEST_PG_URL"
        }
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_ENABLED="true",
        )
        env.update(extra)
        return env

    def get(self, path: str) -> httpx.Response:
        response = httpx.get(f"{self.api_url}{path}", timeout=10)
        response.raise_for_status()
        return response

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        response = httpx.post(f"{self.api_url}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1:<free port>; stopped (whole group) at the end."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    log = home / "server.log"
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home, log=log)
    env = server.env(PREFECT_UI_URL=f"http://127.0.0.1:{port}")  # links in notifications
    env.pop("PREFECT_API_URL")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the uvicorn children stop too
        )
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                pytest.fail(f"prefect server not healthy after {STARTUP_TIMEOUT_S} s:\n{tail(log)}")
            time.sleep(0.25)
        print(f"prefect server healthy after {time.monotonic() - started:.1f} s")
        yield server
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def run_command(
    args: list[str], env: dict[str, str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result
