"""Submission through the Ray Jobs API to a real local Ray head with token authentication."""

from __future__ import annotations

import sys

import pytest

from tests.cluster.conftest import REPO, stts_cli

CONFIG = REPO / "tests" / "cluster" / "configs" / "fake_tiny.yaml"
ENTRY = (
    f"{sys.executable} tests/cluster/fake_train.py"  # relative: runs in the uploaded working dir
)

pytestmark = pytest.mark.slow


def test_submit_to_ray_streams_logs_and_succeeds(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    env = {"RAY_AUTH_TOKEN_PATH": ray_head["token_path"], "FAKE_TRAIN_STEP_S": "0.05"}
    out = stts_cli(
        [
            "submit",
            str(CONFIG),
            f"train.run_dir={run_dir}",
            "train.num_steps=6",
            "--cluster",
            "ray",
            "--address",
            ray_head["address"],
            "--entry",
            ENTRY,
        ],
        env=env,
        timeout=400,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Submitted Ray job fake_tiny-" in out.stdout, text
    # Logs of both ranks were streamed back, then the final status.
    assert "[rank 0] [rank0] step 6 loss" in out.stdout, text
    assert "[rank 0] [rank0] done: 6 steps" in out.stdout, text
    assert "rank exit codes [0, 0]" in out.stdout, text
    assert "finished: SUCCEEDED" in out.stdout, text
    assert (run_dir / "checkpoints" / "step-6.pt").is_file()

    job_id = out.stdout.split("Submitted Ray job ")[1].split()[0]
    status = stts_cli(["status", job_id, "--address", ray_head["address"]], env=env)
    assert status.returncode == 0 and "JobState: SUCCEEDED" in status.stdout, status


def test_ray_without_the_token_is_refused_with_a_hint(ray_head, tmp_path):
    # No token anywhere (HOME without ~/.ray/auth_token): the server answers 401.
    unset = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
    out = stts_cli(
        ["status", "no-such-job", "--address", ray_head["address"]],
        env={"HOME": str(tmp_path)},
        unset=unset,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "RAY_AUTH_TOKEN_PATH" in out.stderr, out.stderr
    # A wrong token is refused as well.
    out = stts_cli(
        ["status", "no-such-job", "--address", ray_head["address"]],
        env={"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "0" * 64},
        unset=unset,
    )
    assert out.returncode == 2 and "auth token" in out.stderr, out.stderr
