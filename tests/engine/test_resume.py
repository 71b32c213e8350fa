"""Exact resume through the real CLI: SIGKILL of every rank, kill during a checkpoint write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workers import read_jsonl, toy_config

pytestmark = pytest.mark.slow  # `stts-train train` subprocesses

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def _write_cfg(path: Path, run_dir: Path, **sections) -> Path:
    cfg = toy_config(str(run_dir), **sections)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(
    cfg: Path, *overrides: str, fault: dict[str, str] | None = None, timeout: float = 300
) -> int:
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(fault or {})
    # own session: fault injection SIGKILLs the whole process group (launcher + ranks), not pytest
    proc = subprocess.Popen(
        [sys.executable, "-m", "stts_train.cli", "train", str(cfg), *overrides],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode not in (0, -9, 3):
        raise AssertionError(f"train exited {proc.returncode}:\n{err[-4000:]}")
    return proc.returncode


def _final_weights(run_dir: Path) -> dict:
    from stts_train.checkpoint.consolidate import consolidate_path

    state, meta, _ = consolidate_path(str(run_dir))
    return {"step": meta["step"], "state": state}


def _run_record(run_dir: Path) -> dict:
    return {
        "losses": [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl")],
        "keys": [r["keys"] for r in read_jsonl(run_dir / "samples.jsonl")],
    }


def _assert_same(a: Path, b: Path) -> None:
    ra, rb = _run_record(a), _run_record(b)
    assert ra["keys"] == rb["keys"]
    assert ra["losses"] == rb["losses"]  # bit-exact on CPU in fp32
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa["step"] == wb["step"] == 6
    for k in wa["state"]:
        assert (wa["state"][k] == wb["state"][k]).all(), k


def test_sigkill_resume_is_exact_and_kill_during_checkpoint_keeps_previous(tmp_path):
    sections = dict(
        train={"num_steps": 6},
        checkpoint={"every": 3, "keep_last": 2},
        parallel={"num_ranks": 2, "zero_stage": 2},
    )
    straight = tmp_path / "straight"
    assert _train(_write_cfg(tmp_path / "a.yaml", straight, **sections)) == 0

    # 2N straight == N, SIGKILL of every rank (after step 5, past the step-3 checkpoint), resume
    killed = tmp_path / "killed"
    cfg_b = _write_cfg(tmp_path / "b.yaml", killed, **sections)
    assert _train(cfg_b, fault={"STTS_FAULT_KILL_AT_STEP": "5"}) == -9
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert len(_run_record(killed)["losses"]) == 5
    assert _train(cfg_b) == 0
    _assert_same(straight, killed)

    # SIGKILL while the step-6 checkpoint is half written: step 3 stays the loadable latest
    torn = tmp_path / "torn"
    cfg_c = _write_cfg(tmp_path / "c.yaml", torn, **sections)
    assert _train(cfg_c, fault={"STTS_FAULT_KILL_IN_CHECKPOINT": "6"}) == -9
    ckpts = torn / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000003"
    assert (ckpts / ".tmp-step-00000006").is_dir() and not (ckpts / "step-00000006").exists()
    assert json.loads((ckpts / "step-00000003" / "meta.json").read_text())["step"] == 3
    assert _train(cfg_c) == 0
    _assert_same(straight, torn)
    assert not (ckpts / ".tmp-step-00000006").exists()
