"""Submission to a real single-node Slurm cluster: a 2-rank CPU job completes, and a job that
is preempted mid-run checkpoints, requeues itself, resumes and ends with the same weights."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster import slurm
from tests.cluster.conftest import REPO, stts_cli

# The stand-in trainer follows the `stts-train train` contract. To run these tests against the
# real trainer (entry `stts-train train`, config configs/tiny_cpu.yaml), change the default
# below to "1" (one line), or set STTS_CLUSTER_TEST_REAL_TRAINER=1.
USE_REAL_TRAINER = os.environ.get("STTS_CLUSTER_TEST_REAL_TRAINER", "1") == "1"

if USE_REAL_TRAINER:
    CONFIG, ENTRY = REPO / "configs" / "tiny_cpu.yaml", []
    OVERRIDES = ["parallel.num_ranks=2", "checkpoint.every=3", "checkpoint.keep_last=2"]
else:
    CONFIG = REPO / "tests" / "cluster" / "configs" / "fake_tiny.yaml"
    ENTRY = ["--entry", f"{sys.executable} {REPO / 'tests' / 'cluster' / 'fake_train.py'}"]
    OVERRIDES: list[str] = []
NUM_STEPS = (
    30 if USE_REAL_TRAINER else 16
)  # the real tiny steps are faster: keep a window to preempt
STEP_ENV = {"FAKE_TRAIN_STEP_S": "0.4"}

pytestmark = pytest.mark.slow


def submit(run_dir: Path) -> str:
    out = stts_cli(
        [
            "submit",
            str(CONFIG),
            f"train.run_dir={run_dir}",
            f"train.num_steps={NUM_STEPS}",
            *OVERRIDES,
            "--cluster",
            "slurm",
            "--time",
            "00:10:00",
            *ENTRY,
        ],
        env=STEP_ENV,
    )
    assert out.returncode == 0, out.stderr
    match = re.search(r"Submitted Slurm job (\d+)", out.stdout)
    assert match, out.stdout
    return match.group(1)


def wait_for(job_id: str, states: set[str], timeout_s: float = 240) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = slurm.job_info(job_id)
        if info.get("JobState") in states:
            return info
        time.sleep(0.5)
    raise AssertionError(
        f"job {job_id} not in {states} after {timeout_s}s: {slurm.job_info(job_id)}"
    )


def log_of(run_dir: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in (run_dir / "slurm").glob(f"*-{job_id}.out"))


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """Committed checkpoints: `step-N.pt` (stand-in) or `step-0000000N/` (stts-train train)."""
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return {}
    return {
        int(m.group(1)): p
        for p in ckpt_dir.iterdir()
        if (m := re.fullmatch(r"step-(\d+)(\.pt)?", p.name))
    }


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Model tensors of the newest checkpoint (the stand-in's file, or DeepSpeed's model states)."""
    steps = checkpoint_steps(run_dir)
    assert steps, f"no checkpoints in {run_dir}"
    ckpt = steps[max(steps)]
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    import numpy as np
    import numpy.dtypes

    # DeepSpeed's model-states file also pickles a few numpy objects; allow exactly those.
    allowed = [np._core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    tensors: dict[str, torch.Tensor] = {}
    with torch.serialization.safe_globals(allowed):
        for f in sorted(ckpt.glob("mp_rank_*_model_states.pt")):
            for k, v in torch.load(f, weights_only=True)["module"].items():
                tensors[f"{f.name}:{k}"] = v
    assert tensors, f"no model states in {ckpt}"
    return tensors


def wait_for_checkpoint(run_dir: Path, job: str, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while max(checkpoint_steps(run_dir), default=0) < step:
        assert time.monotonic() < deadline, log_of(run_dir, job)
        assert slurm.job_info(job)["JobState"] in {"PENDING", "RUNNING"}, log_of(run_dir, job)
        time.sleep(0.1)


def test_two_rank_job_completes_then_preempted_job_resumes_to_same_weights(slurm_cluster, tmp_path):
    # 1. An uninterrupted 2-rank job.
    ref_dir = tmp_path / "reference"
    ref_job = submit(ref_dir)
    info = wait_for(ref_job, slurm.FINAL_STATES)
    log = log_of(ref_dir, ref_job)
    assert info["JobState"] == "COMPLETED", (info, log)
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0", info
    assert "2 ranks" in log and "rendezvous localhost:" in log, log
    assert max(checkpoint_steps(ref_dir)) == NUM_STEPS, log

    status = stts_cli(["status", ref_job])
    assert status.returncode == 0 and "JobState: COMPLETED" in status.stdout, status

    # 2. The same job, preempted mid-run: SIGUSR1 to the batch shell (what --signal=B:USR1@N
    # does before the time limit), forwarded to the ranks, which checkpoint and exit 3.
    run_dir = tmp_path / "preempted"
    job = submit(run_dir)
    wait_for_checkpoint(run_dir, job, 3)
    cancel = stts_cli(["cancel", job, "--signal", "USR1"])
    assert cancel.returncode == 0, cancel.stderr

    info = wait_for(job, slurm.FINAL_STATES)
    log = log_of(run_dir, job)
    assert info["JobState"] == "COMPLETED", (info, log)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0", (info, log)
    assert "forwarding it to the training ranks" in log, log
    assert "requeueing job" in log, log
    assert "restart 1/3" in log, log
    preempted_at = (
        int(re.search(r"checkpointed step (\d+)", log).group(1))
        if "checkpointed step" in log
        else None
    )
    assert preempted_at is None or 3 <= preempted_at < NUM_STEPS, log

    ref, got = final_weights(ref_dir), final_weights(run_dir)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key

    # 3. `stts-train cancel` (scancel: SIGTERM to shell and ranks) checkpoints but never requeues.
    run_dir = tmp_path / "cancelled"
    job = submit(run_dir)
    wait_for_checkpoint(run_dir, job, 2)
    cancel = stts_cli(["cancel", job])
    assert cancel.returncode == 0, cancel.stderr
    info = wait_for(job, slurm.FINAL_STATES)
    log = log_of(run_dir, job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, log)
    assert "not requeueing" in log, log
