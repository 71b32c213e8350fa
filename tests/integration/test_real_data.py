"""Real data through the model: generated benchmark -> shards -> loader -> model -> eval."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from stts_train.config import load_config
from stts_train.data.loader import PipelineSource, eval_stream
from stts_train.demo.benchmark import BenchmarkSpec, generate
from stts_train.eval.evaluator import Evaluator, evidence_groups
from stts_train.models.tokenizer import qwen_tokenizer
from stts_train.models.vlm import Molmo2VLM
from stts_train.train.loss import single_batch_loss


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mdq")
    generate(root / "src", BenchmarkSpec(num_clips=10, seed=3), eval_fraction=0.3, progress=False)
    for split in ("train", "eval"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "stts_train.cli",
                "data",
                "build",
                str(root / "src" / split),
                str(root / split),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return root


def demo_job(path, *extra):
    return load_config(
        "configs/demo.yaml",
        [
            f"data.path={path}",
            "data.loader=sync",
            "packing.window_size=6",
            "train.micro_batches_per_step=2",
            *extra,
        ],
    )


@pytest.mark.slow
def test_loader_rows_respect_budgets_and_resume_exactly(shards):
    job = demo_job(shards / "train", "packing.max_llm_tokens=600")
    src = PipelineSource(job, 0, 1)
    first = src.next_microbatches(0)
    state = src.state_dict()
    after = [mb.sample_keys for mb in src.next_microbatches(1) + src.next_microbatches(2)]
    src.close()
    resumed = PipelineSource(job, 0, 1)
    resumed.load_state_dict(state)
    again = [mb.sample_keys for mb in resumed.next_microbatches(1) + resumed.next_microbatches(2)]
    resumed.close()
    assert after == again
    cfg = job.model
    for mb in first:
        kept_llm = (
            mb.input_ids_S.numel() - int((mb.input_ids_S == cfg.tokens.image_patch_id).sum()) // 2
        )
        assert (
            kept_llm <= 600 + 10
        )  # kept placeholders are half (keep 0.5) up to per-video rounding
        assert mb.pixels_FNC.shape[0] * cfg.vit.num_patches <= job.packing.max_vit_patches
        torch.testing.assert_close(
            mb.cu_seqlens_B1[-1].long(), torch.tensor(mb.input_ids_S.numel())
        )
    model = Molmo2VLM(cfg).train()
    out = model(first[0])
    loss = single_batch_loss(out, cfg.stts.aux_loss_weight)
    loss.backward()
    assert torch.isfinite(loss)


def _one_epoch(path: str) -> dict:
    """Runs on every gloo rank: one epoch through the loader, then a resume from step 1."""
    import torch.distributed as dist

    from stts_train.errors import DataError

    rank, world = dist.get_rank(), dist.get_world_size()
    job = demo_job(
        path, "data.num_epochs=1", "packing.window_size=2", "train.micro_batches_per_step=1"
    )
    src = PipelineSource(job, rank, world)
    steps, stats, state_after_1 = [], [], None
    try:
        while True:
            mbs = src.next_microbatches(len(steps))
            steps.append([(list(mb.sample_keys), mb.num_samples) for mb in mbs])
            stats.append(dict(src.window_stats))
            if len(steps) == 1:
                state_after_1 = src.state_dict()
    except DataError as e:
        exhausted = str(e)
    src.close()
    resumed = PipelineSource(job, rank, world)
    resumed.load_state_dict(state_after_1)
    replay = [
        [(list(mb.sample_keys), mb.num_samples) for mb in resumed.next_microbatches(1 + i)]
        for i in range(min(2, len(steps) - 1))
    ]
    resumed.close()
    return {"steps": steps, "stats": stats, "replay": replay, "exhausted": exhausted}


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_ranks_plan_globally_and_exchange_samples(shards, ranks):
    """Ranks decode their own shares, plan the union (balanced) and swap samples: over one epoch
    every training sample is used exactly once, ranks stay in lockstep, resume replays exactly."""
    import json

    from stts_train.testing import run_distributed_test

    out = run_distributed_test(_one_epoch, ranks, (str(shards / "train"),), timeout_s=600)
    root = shards / "train"
    manifest = json.loads((root / "manifest.json").read_text())
    expected = [
        s["key"]
        for shard in manifest["shards"]
        for s in json.loads((root / shard["index"]).read_text())["samples"]
    ]
    assert len(expected) == manifest["num_samples"] >= 5
    assert (
        len({len(r["steps"]) for r in out}) == 1 and len(out[0]["steps"]) > 1
    )  # lockstep, several steps
    keys = [k for r in out for step in r["steps"] for keys, _ in step for k in keys]
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)
    for r in out:
        assert all(
            n == len(k) for step in r["steps"] for k, n in step
        )  # padding rows count no samples
        assert r["replay"] == r["steps"][1 : 1 + len(r["replay"])]
        assert "exhausted" in r["exhausted"] and "data.num_epochs" in r["exhausted"]
    assert all(
        r["stats"] == out[0]["stats"] for r in out
    )  # one plan, computed identically on every rank
    assert all(
        0.0 <= s["moved_fraction"] <= 1.0 and s["planned_imbalance"] >= 0.0 for s in out[0]["stats"]
    )


@pytest.mark.slow
def test_eval_scores_choices_and_evidence(shards):
    job = demo_job(shards / "eval")
    torch.manual_seed(0)
    model = Molmo2VLM(job.model)
    tok = qwen_tokenizer()
    results = {}
    for pruner, keep in (("none", 1.0), ("stts", 0.5), ("visionzip", 0.5)):
        ev = Evaluator(model, tok, pruner=pruner, keep_ratio=keep)
        stream = eval_stream(job, str(shards / "eval"))
        for sample in stream:
            ev.add(sample, qtype=sample.evidence["qtype"])
        stream.close()
        results[pruner] = ev.result.summary()
    n = results["none"]["questions"]
    assert n == 6 and set(results["none"]["accuracy_per_type"]) == {"which", "direction"}
    assert (
        results["none"]["evidence_recall"] == 1.0
        and results["none"]["visual_tokens_kept_ratio"] == 1.0
    )
    for name in ("stts", "visionzip"):
        assert 0.4 <= results[name]["visual_tokens_kept_ratio"] <= 0.6
        assert 0.0 <= results[name]["evidence_recall"] <= 1.0


def test_evidence_groups_map_boxes_to_the_grid(tiny_config):
    cfg = load_config("configs/demo.yaml").model  # 126 px, 3x3 groups of 42 px
    evidence = {"boxes": [[2, 0, 0, 42, 42], [5, 84, 84, 126, 126], [5, 50, 10, 60, 20]]}
    mask = evidence_groups(cfg, evidence, frame_indices=[0, 2, 5], frame_size=(126, 126))
    assert mask.shape == (3, 9)
    assert mask[1].tolist() == [True] + [False] * 8
    assert mask[2].tolist() == [False] * 8 + [True]  # the small box covers < 25% of its group
    assert not mask[0].any()


@pytest.mark.slow
def test_train_streams_shards_from_s3(shards, tmp_path, moto_url, s3_bucket):
    """`stts-train train` on shards in a real S3 server (moto): data build to s3://, 2 ranks, Ray
    decoding."""
    import json
    import os

    env = dict(os.environ, WANDB_MODE="disabled")
    dest = f"s3://{s3_bucket}/mdq/train"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stts_train.cli",
            "data",
            "build",
            str(shards / "src" / "train"),
            dest,
            "--s3-endpoint-url",
            moto_url,
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stts_train.cli",
            "train",
            "configs/demo.yaml",
            f"train.run_dir={run_dir}",
            f"data.path={dest}",
            f"data.s3_endpoint_url={moto_url}",
            "train.num_steps=2",
            "checkpoint.every=2",
            "packing.window_size=4",
            "metrics.progress_bar=false",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(
        r["pruner/keep_ratio"] == 0.5 for r in steps
    )
    assert all(
        0.0 <= r["data/moved_fraction"] <= 1.0 and r["data/planned_imbalance"] < 0.5 for r in steps
    )

    def flat(x):
        return [k for item in x for k in flat(item)] if isinstance(x, list) else [x]

    keys = flat(
        [json.loads(line)["keys"] for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    )
    assert keys and all(k.startswith("digits_") for k in keys)
