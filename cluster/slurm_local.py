"""A throw-away single-node Slurm cluster on 127.0.0.1, for tests and local trials.

`LocalSlurm(root).start()` writes a munge key and a one-node `slurm.conf` under `root`, starts
`munged`, `slurmctld` and `slurmd` in the foreground as child processes (so their PIDs are
known), and waits until `sinfo` reports the node idle. `stop()` cancels what is still queued and
ends exactly those three processes by PID. Needs root and Debian's `slurmctld slurmd
slurm-client munge` (installed by `cluster/setup.sh`).

Everything lives under `root` (state, spool, logs, sockets); callers point the Slurm client
commands at it through `env()` (it sets `SLURM_CONF`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

from stts_train.parallel.launch import free_port

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "srun")


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None]


class LocalSlurm:
    """One slurmctld + one slurmd + one munged, all on 127.0.0.1, owned by this object."""

    node_name = "localhost"
    partition = "debug"

    def __init__(self, root: str | Path, *, cpus: int | None = None, memory_mb: int = 4000) -> None:
        # The node advertises the configured CPUs and memory (SlurmdParameters=config_overrides),
        # so 2-rank tests also schedule on a 1-CPU CI runner.
        self.root = Path(root)
        self.cpus = cpus or max(2, os.cpu_count() or 2)
        self.memory_mb = memory_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"

    # -- configuration --------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (sbatch, squeue, scontrol) aimed at this
        cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # munged runs as the `munge` user and refuses directories others can write to; the
        # root dir must also be traversable by that user (pytest's tmp dirs are 0700).
        os.chmod(self.root, 0o755)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(exist_ok=True)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        r = self.root
        lines = [
            "ClusterName=stts-local",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again
            # (default 120 s); a short value keeps preemption tests quick.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            # No cgroups or systemd here: track processes through /proc, bind nothing.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            # Re-check pending jobs (e.g. requeued ones past their BeginTime) every second.
            "SchedulerParameters=sched_interval=1",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobRequeue=1",
            # Keep finished jobs visible to `scontrol show job` (no accounting database).
            "MinJobAge=900",
            "KillWait=10",
            (
                f"NodeName={self.node_name} NodeAddr=127.0.0.1 NodeHostname={self.node_name} "
                f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
            ),
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    # -- lifecycle ------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        with open(self.root / "log" / f"{name}.stdout", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), **kw
            )

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                f"Slurm binaries {missing} are not installed; run cluster/setup.sh "
                "(Debian packages slurmctld slurmd slurm-client munge)"
            )
        if os.geteuid() != 0:
            raise RuntimeError("a local Slurm cluster needs root (slurmd runs jobs as their owner)")
        self._write_files()
        m = self.munge_dir
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            user="munge",
            group="munge",
            extra_groups=[],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node_name, "-f", str(self.conf)])
        try:
            self._wait(self._node_idle, timeout_s, "node idle in sinfo")
        except Exception:
            self.stop()
            raise
        return self

    def _node_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root}/log")
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}; logs in {self.root}")

    def stop(self) -> None:
        """Cancel remaining jobs, then end slurmd, slurmctld and munged (by PID, in that order)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--partition", self.partition],
                env=self.env(),
                capture_output=True,
                timeout=30,
                check=False,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                q = subprocess.run(
                    ["squeue", "-h", "-t", "all", "-o", "%T"],
                    env=self.env(),
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                if not {"RUNNING", "COMPLETING"} & set(q.stdout.split()):
                    break
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.slurm_local [DIR]`: run a local cluster until Ctrl-C (or SIGTERM)."""
    import signal
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    root = args[0] if args else tempfile.mkdtemp(prefix="stts-slurm-", dir="/tmp")
    cluster = LocalSlurm(root).start()
    print(
        f"local Slurm cluster up; in another shell:\n  export SLURM_CONF={cluster.conf}", flush=True
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(p.poll() is None for p in cluster.procs.values()):
            time.sleep(1)
        print("a Slurm daemon exited; see the logs in", cluster.root / "log", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
        print("stopped munged, slurmctld and slurmd", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
