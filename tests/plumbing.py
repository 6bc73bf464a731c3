"""Test plumbing shared by the suites, in one place: free loopback ports, an S3 endpoint
(moto) and prefect-aws blocks on it, a Slack webhook receiver. The fixtures built on these
are in ``conftest.py`` (``moto_endpoint``, ``s3_store``, ``store``, ``slack_receiver``)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[Any, str]:
    """A real S3 HTTP endpoint on loopback: (server, endpoint URL); ``server.stop()`` ends it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def s3_bucket_block(
    endpoint: str, bucket: str, folder: str = "staging", *, create: bool = True
) -> Any:
    """A prefect-aws ``S3Bucket`` block on ``endpoint``, built in-process (no Prefect API
    needed); the bucket is created unless ``create=False`` (another endpoint in front of the
    same server, e.g. a failing proxy)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    credentials = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key=SecretStr("testing"),
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    if create:
        credentials.get_s3_client().create_bucket(Bucket=bucket)
    return S3Bucket(bucket_name=bucket, credentials=credentials, bucket_folder=folder)


class SlackReceiver:
    """A loopback stand-in for a Slack incoming webhook: records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.status = 200
        self._closed = False
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw.decode("utf-8"))
                except ValueError:
                    body = {"raw": raw.decode("utf-8", "replace")}
                with receiver._lock:
                    receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status < 400 else b"invalid_payload")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self._server.server_address[1]
        # The path of a real webhook URL is its secret; tests check that it never shows up.
        self.url = (
            f"http://127.0.0.1:{port}/services/T0TEST/B0TEST/webhook-secret-{uuid.uuid4().hex[:8]}"
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def texts(self) -> list[str]:
        with self._lock:
            return [str(b.get("text", b)) for b in self.bodies]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first received text matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for text in self.texts:
                if predicate(text):
                    return text
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def close(self) -> None:
        """Stop listening (a test may call it to play "Slack is down"); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
