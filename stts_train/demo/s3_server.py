"""A real S3 server on 127.0.0.1 for `stts-train demo --s3` (moto's server), stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from stts_train.parallel.launch import free_port


@dataclass
class LocalS3:
    endpoint: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_s3(
    bucket: str | None = None, timeout_s: float = 30.0, log_path: str | None = None
) -> LocalS3:
    """Start moto_server on a free port (optionally creating `bucket`); dummy AWS credentials are
    set in this process's environment if none are, accepted only by this local server."""
    port = free_port()
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    server = LocalS3(endpoint, process)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local-demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"moto_server did not start on {endpoint}; is moto[server] installed?"
                ) from None
            time.sleep(0.2)
    if bucket:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return server
