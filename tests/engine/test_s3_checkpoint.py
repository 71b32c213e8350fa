"""Checkpoints on s3:// (a real moto S3 server): commit, resume exactly, export from the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

pytestmark = pytest.mark.slow  # moto S3 server + `stts-train` subprocesses


def train(run_dir, steps, env, *extra, expect_killed=False):
    cmd = [
        sys.executable,
        "-m",
        "stts_train.cli",
        "train",
        "configs/tiny_cpu.yaml",
        f"train.run_dir={run_dir}",
        f"train.num_steps={steps}",
        "checkpoint.every=2",
        "metrics.progress_bar=false",
        *extra,
    ]
    # its own session: the fault injector SIGKILLs the whole process group
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    if expect_killed:
        assert out.returncode == -9, (out.returncode, out.stderr[-3000:])
    else:
        assert out.returncode == 0, out.stderr[-3000:]


def losses(run_dir):
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_s3_checkpoints_resume_exactly_and_export(tmp_path, moto_url, s3_bucket):
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_url, WANDB_MODE="disabled")
    s3_root = f"s3://{s3_bucket}/runs/tiny"
    # a 6-step run SIGKILLed after step 5 (checkpoints every 2 steps in the bucket), then resumed
    train(
        tmp_path / "s3run",
        6,
        dict(env, STTS_FAULT_KILL_AT_STEP="5"),
        f"checkpoint.dir={s3_root}",
        expect_killed=True,
    )
    s3 = boto3.client("s3", endpoint_url=moto_url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert (
        s3.get_object(Bucket=s3_bucket, Key="runs/tiny/latest")["Body"].read().decode().strip()
        == "step-00000004"
    )
    assert any(k.startswith("runs/tiny/step-00000004/") for k in keys)
    train(tmp_path / "s3run", 6, env, f"checkpoint.dir={s3_root}")
    # reference: 6 steps straight, local checkpoints
    train(tmp_path / "local", 6, env)
    resumed, straight = losses(tmp_path / "s3run"), losses(tmp_path / "local")
    assert set(straight) == {1, 2, 3, 4, 5, 6}
    for step in range(1, 7):
        assert resumed[step] == straight[step], f"step {step}: {resumed[step]} != {straight[step]}"
    out = subprocess.run(
        [sys.executable, "-m", "stts_train.cli", "export", s3_root, str(tmp_path / "hf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "hf" / "config.json").is_file() and (
        tmp_path / "hf" / "model.safetensors.index.json"
    ).is_file()
