"""Fixtures that start real clusters on 127.0.0.1 and stop them by PID.

- `slurm_cluster`: munged + slurmctld + slurmd (cluster/slurm_local.py); installs the Debian
  packages first when they are missing (CI machines run as root).
- `ray_head`: `ray start --head --block` on free ports with token authentication and its own
  temp dir; stopped by SIGTERM to that PID (the blocking `ray start` then shuts down every Ray
  process it started), then any leftover process of that temp dir is ended by PID.
Never `ray stop`: it would kill other users' Ray processes on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.slurm_local import LocalSlurm, missing_binaries
from stts_train.parallel.launch import free_port

REPO = Path(__file__).resolve().parents[2]
SLURM_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def _install_slurm() -> None:
    if not missing_binaries():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *SLURM_PACKAGES],
        check=True,
        env=env,
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    _install_slurm()
    root = Path(f"/tmp/stts-slurm-{secrets.token_hex(4)}")
    cluster = LocalSlurm(root, cpus=max(2, os.cpu_count() or 2))
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(root, ignore_errors=True)


def _pids_using(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def ray_head():
    # Short temp dir: Ray puts unix sockets under it (path length limit).
    temp_dir = Path(f"/tmp/rs-{secrets.token_hex(4)}")
    temp_dir.mkdir()
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    gcs_port, dash_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    env.pop("RAY_ADDRESS", None)
    argv = [
        shutil.which("ray") or "ray",
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    with open(temp_dir / "ray-start.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash_port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                tail = (temp_dir / "ray-start.log").read_text()[-3000:]
                raise RuntimeError(f"ray start exited {proc.returncode}: {tail}")
            try:
                req = urllib.request.Request(
                    f"{address}/api/version",
                    headers={"Authorization": f"Bearer {token_path.read_text()}"},
                )
                urllib.request.urlopen(req, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield {"address": address, "token_path": str(token_path), "temp_dir": str(temp_dir)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _pids_using(str(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _pids_using(str(temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def stts_cli(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path = REPO,
    unset: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run `stts-train ARGS` as a subprocess of this interpreter (env merged over ours)."""
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "stts_train.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
