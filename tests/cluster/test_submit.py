"""Fast checks of the submission machinery (no cluster daemons): rendering, dry runs, the batch
script's requeue logic against stub Slurm commands, local runs, names and config validation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import slurm
from stts_train.config import load_config
from stts_train.errors import ConfigError
from stts_train.train import naming
from stts_train.train.exit_codes import EXIT_PREEMPTED
from tests.cluster.conftest import REPO, stts_cli

CONFIG = REPO / "tests" / "cluster" / "configs" / "fake_tiny.yaml"
FAKE = REPO / "tests" / "cluster" / "fake_train.py"


@pytest.mark.slow
def test_slurm_dry_run_prints_script_and_resolved_config(tmp_path):
    out = stts_cli(
        [
            "submit",
            str(CONFIG),
            f"train.run_dir={tmp_path}",
            "--cluster",
            "slurm",
            "--dry-run",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--cpus-per-task",
            "8",
            "--mem",
            "64G",
            "--time",
            "04:00:00",
            "--partition",
            "gpu",
            "--account",
            "proj",
            "--qos",
            "high",
            "--max-requeues",
            "5",
            "--signal-grace",
            "300",
            "cluster.env={NCCL_DEBUG: WARN, NCCL_IB_DISABLE: '1'}",
        ]
    )
    assert out.returncode == 0, out.stderr
    script = out.stdout
    for line in [
        "#SBATCH --job-name=fake_tiny",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --mem=64G",
        "#SBATCH --time=04:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        f"#SBATCH --output={tmp_path}/slurm/%x-%j.out",
        "#SBATCH --open-mode=append",
        "MAX_REQUEUES=5",
        f"EXIT_PREEMPTED={EXIT_PREEMPTED}",
        "export NCCL_DEBUG=WARN",
        "export NCCL_IB_DISABLE=1",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
    ]:
        assert line in script, line
    assert f"stts-train train {CONFIG} train.run_dir={tmp_path}" in script
    # The resolved config follows the script, with the flags applied.
    resolved = script.split("# resolved config\n", 1)[1]
    assert "gpus_per_node: 4" in resolved and "max_requeues: 5" in resolved
    assert "NCCL_DEBUG: WARN" in resolved


def test_ranks_per_node_from_num_ranks_and_errors():
    cfg = load_config(CONFIG, ["parallel.num_ranks=4", "cluster.slurm.nodes=2"])
    assert slurm.ranks_per_node(cfg) == 2
    cfg = load_config(CONFIG, ["parallel.num_ranks=3", "cluster.slurm.nodes=2"])
    with pytest.raises(slurm.SlurmError, match="does not split evenly"):
        slurm.ranks_per_node(cfg)


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="cluster.slurm.max_requeues"):
        load_config(CONFIG, ["cluster.slurm.max_requeues=-1"])
    with pytest.raises(ConfigError, match="cluster.slurm.extra_sbatch"):
        load_config(CONFIG, ["cluster.slurm.extra_sbatch=[exclusive]"])
    with pytest.raises(ConfigError, match="cluster.kind"):
        load_config(CONFIG, ["cluster.kind=k8s"])


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rank_exit", "restarts", "job_state", "want_rc", "want_requeue"),
    [
        (3, 0, "RUNNING", 0, True),  # preempted, budget left: requeue, exit 0
        (3, 2, "RUNNING", 3, False),  # budget spent: stop with the preempted code
        (3, 0, "COMPLETING", 3, False),  # scancel'd (SIGTERM): stays cancelled
        (0, 0, "RUNNING", 0, False),
        (1, 0, "RUNNING", 1, False),
    ],
)
def test_batch_script_requeues_only_preempted_runs_within_budget(
    tmp_path, rank_exit, restarts, job_state, want_rc, want_requeue
):
    cfg = load_config(CONFIG, [f"train.run_dir={tmp_path}", "cluster.slurm.max_requeues=2"])
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render_script(cfg, CONFIG))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _stub(
        bin_dir,
        "scontrol",
        f'echo "scontrol $*" >> {calls}\n'
        '[ "$1 $2" = "show hostnames" ] && echo node1 && echo node2\n'
        f'[ "$1 $2" = "show job" ] && echo "JobId=$3 JobState={job_state} Reason=None"\n'
        "exit 0",
    )
    _stub(bin_dir, "srun", f'echo "srun $*" >> {calls}; exit {rank_exit}')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NTASKS": "2",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_RESTART_COUNT": str(restarts),
    }
    out = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    log = calls.read_text()
    assert out.returncode == want_rc, out.stdout + out.stderr
    assert ("scontrol requeue 77" in log) == want_requeue, log
    assert "rendezvous node1:20077" in out.stdout, out.stdout
    assert "stts-rank stts-train train" in log, log


@pytest.mark.slow
def test_ray_dry_run_shows_runtime_env_without_token(tmp_path):
    env = {"RAY_AUTH_TOKEN": "secret-token-value"}
    out = stts_cli(
        ["submit", str(CONFIG), "--cluster", "ray", "--address", "http://127.0.0.1:1", "--dry-run"],
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "working_dir: " + str(REPO) in out.stdout
    assert "STTS_SUBMIT_SPEC" in out.stdout and '"num_workers": 2' in out.stdout
    assert "secret-token-value" not in out.stdout + out.stderr


@pytest.mark.slow
def test_local_submit_runs_two_ranks_and_resumes(tmp_path):
    entry = ["--entry", f"{sys.executable} {FAKE}"]
    env = {"FAKE_TRAIN_STEP_S": "0"}
    out = stts_cli(
        ["submit", str(CONFIG), f"train.run_dir={tmp_path}", "train.num_steps=3", *entry], env=env
    )
    assert out.returncode == 0, out.stderr
    assert "[rank0] done: 3 steps" in out.stdout
    # Same run dir, more steps: resumes from step 3 instead of starting over.
    out = stts_cli(
        ["submit", str(CONFIG), f"train.run_dir={tmp_path}", "train.num_steps=5", *entry], env=env
    )
    assert out.returncode == 0, out.stderr
    assert "resumed from step-3.pt" in out.stdout and "step 4 loss" in out.stdout
    assert "step 2 loss" not in out.stdout


def test_run_names():
    assert naming.run_name("tiny cpu", "abc1234", 42) == "tiny-cpu-abc1234-42"
    assert naming.run_name("tiny_cpu", "nogit") == "tiny_cpu-nogit-local"
    assert naming.run_name_prefix("tiny cpu", "abc1234") == "tiny-cpu-abc1234"
    assert naming.git_sha7("/") == "nogit"
    assert len(naming.git_sha7(REPO)) == 7
    # the trainer takes the launcher's name, else makes the same one from the job id
    assert naming.current_run_name("x", {naming.RUN_NAME_ENV: "tiny-abc1234-7"}) == "tiny-abc1234-7"
    made = naming.current_run_name("tiny cpu", {"SLURM_JOB_ID": "5", "STTS_JOB_ID": "ray1"})
    assert made == naming.run_name("tiny cpu", job_id="5") and made.endswith("-5")
    assert naming.current_run_name("tiny", {"STTS_JOB_ID": "ray1"}).endswith("-ray1")
    assert naming.current_run_name("tiny", {}).endswith("-local")


@pytest.mark.slow
def test_commands_have_help():
    for name in ("submit", "status", "cancel"):
        out = stts_cli([name, "--help"])
        assert out.returncode == 0 and "usage: stts-train " + name in out.stdout
