"""`stts-train demo`: the whole system on one machine, from real assets to an evaluated model.

Stages (each prints a progress bar): generate MovingDigits-QA clips -> `data build` into the
embedded store (a local folder, or a local S3 server with --s3) -> train STTS at keep 0.5 on 2
ranks under DeepSpeed ZeRO-3 with Ray decoding -> SIGKILL it mid-way and resume (the replayed
steps must reproduce the killed run's losses and samples) -> train the same model unpruned ->
evaluate both, plus training-free pruners on the unpruned model -> measure speed against frame
count -> write report.md with plots.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class DemoPlan:
    num_clips: int
    base_steps: int
    """Unpruned training from scratch (the 'pretrained model' STTS starts from, as in the paper)."""
    steps: int
    """Then the same number of steps for each arm: STTS fine-tuning and unpruned continuation."""
    checkpoint_every: int
    eval_questions: int | None
    speed_frames: tuple[int, ...]
    training_free: tuple[str, ...]

    @staticmethod
    def make(quick: bool) -> DemoPlan:
        if quick:
            return DemoPlan(
                num_clips=48,
                base_steps=8,
                steps=12,
                checkpoint_every=4,
                eval_questions=16,
                speed_frames=(16,),
                training_free=("visionzip", "random"),
            )
        return DemoPlan(
            num_clips=1200,
            base_steps=300,
            steps=150,
            checkpoint_every=25,
            eval_questions=None,
            speed_frames=(16, 32, 64),
            training_free=("visionzip", "fastvid", "holitom", "random"),
        )


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stts_train.cli", *args]


def train_command(config: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    return cli("train", str(config), f"train.run_dir={run_dir}", *overrides)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_checkpoint_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return -1
    return int(latest.read_text().strip().rsplit("-", 1)[-1])


def run_and_kill(
    cmd: list[str], run_dir: Path, kill_after_step: int, timeout_s: float
) -> tuple[int, int]:
    """Start training, SIGKILL every rank once a checkpoint exists and 2 more steps are logged.

    Returns (checkpoint step it will resume from, last step the killed run logged)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ckpt = latest_checkpoint_step(run_dir)
            logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
            if ckpt >= kill_after_step and logged and max(logged) >= ckpt + 2:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return ckpt, max(logged)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    raise RuntimeError(
        f"training {run_dir} ended (rc={proc.returncode}) before the planned kill at step "
        f"{kill_after_step}"
    )


def step_losses(rows: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def median_step_time(rows: list[dict], skip: int = 3) -> float | None:
    times = [r["perf/step_s"] for r in rows if "perf/step_s" in r][skip:]
    return statistics.median(times) if times else None


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, s3: bool = False) -> Path:
    from stts_train.demo.benchmark import BenchmarkSpec, generate

    started = time.monotonic()
    plan = DemoPlan.make(quick)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = REPO_CONFIGS / "demo.yaml"
    os.environ.setdefault("WANDB_MODE", "offline")

    log(f"1/7 generating {plan.num_clips} MovingDigits-QA clips from real assets")
    spec = BenchmarkSpec(num_clips=plan.num_clips, question_types=("which",))
    bench_info = generate(out / "benchmark", spec)
    vocab_overrides = demo_vocabulary(out, spec)

    server = None
    try:
        if s3:
            from stts_train.demo.s3_server import start_local_s3

            server = start_local_s3("stts-demo")
            store = "s3://stts-demo/store"
            store_overrides = [f"data.s3_endpoint_url={server.endpoint}"]
            log(f"local S3 server at {server.endpoint} (moto, pid {server.process.pid})")
        else:
            store = str(out / "store")
            store_overrides = []
        log(f"2/7 building WebDataset shards into {store}")
        for split in ("train", "eval"):
            build = cli("data", "build", str(out / "benchmark" / split), f"{store}/{split}")
            if s3:
                build += ["--s3-endpoint-url", server.endpoint]
            subprocess.run(build, check=True)

        model_overrides = [*vocab_overrides, *store_overrides]
        data = [f"data.path={store}/train", f"data.eval_path={store}/eval", *model_overrides]
        runs = out / "runs"
        base_dir, stts_dir, cont_dir = runs / "base", runs / "stts", runs / "unpruned"
        log(f"3/7 training the unpruned base model from scratch ({plan.base_steps} steps)")
        subprocess.run(
            train_command(
                config,
                base_dir,
                data
                + [
                    "model.stts.pruner=none",
                    f"train.num_steps={plan.base_steps}",
                    f"checkpoint.every={plan.base_steps}",
                ],
            ),
            check=True,
        )
        base_hf = runs / "base_hf"
        subprocess.run(cli("export", str(base_dir), str(base_hf), "--dtype", "fp32"), check=True)
        arm = data + [
            f"model.hf_checkpoint={base_hf}",
            f"train.num_steps={plan.steps}",
            f"checkpoint.every={plan.checkpoint_every}",
        ]
        kill_at = plan.steps // 2
        log(
            "4/7 fine-tuning with STTS (keep 0.5) from the base; SIGKILL after the checkpoint at "
            f"step >= {kill_at}"
        )
        cmd = train_command(config, stts_dir, arm)
        resumed_from, killed_after = run_and_kill(cmd, stts_dir, kill_at, timeout_s=1800)
        before = step_losses(read_jsonl(stts_dir / "metrics.jsonl"))
        keys_before = {r["step"]: r["keys"] for r in read_jsonl(stts_dir / "samples.jsonl")}
        log(f"killed after step {killed_after}; resuming from checkpoint step {resumed_from}")
        subprocess.run(cmd, check=True)
        after = step_losses(
            [r for r in read_jsonl(stts_dir / "metrics.jsonl") if r.get("step", 0) > resumed_from]
        )
        keys_after = {
            r["step"]: r["keys"] for r in read_jsonl(stts_dir / "samples.jsonl")
        }  # resumed run last
        replayed = list(range(resumed_from + 1, killed_after + 1))
        replay_exact = bool(replayed) and all(before.get(s) == after.get(s) for s in replayed)
        replay_keys = all(keys_before.get(s) == keys_after.get(s) for s in replayed)

        log(f"5/7 continuing the unpruned model from the base for the same {plan.steps} steps")
        subprocess.run(
            train_command(config, cont_dir, arm + ["model.stts.pruner=none"]), check=True
        )

        log("6/7 evaluating")
        evals = evaluate_all(config, store, stts_dir, cont_dir, plan, model_overrides)
        log("   measuring speed against frame count")
        speed = speed_sweep(REPO_CONFIGS / "bench_cpu.yaml", plan.speed_frames)
        log("7/7 writing the report")
        return write_report(
            out,
            bench_info,
            plan,
            stts_dir,
            cont_dir,
            evals,
            speed,
            resumed_from,
            killed_after,
            replay_exact,
            replay_keys,
            store,
            started,
            model_overrides,
        )
    finally:
        if server is not None:
            server.stop()


def evaluate_all(
    config: Path, store: str, stts_dir: Path, base_dir: Path, plan: DemoPlan, overrides: list[str]
):
    from stts_train.config import load_config
    from stts_train.eval.evaluator import Evaluator, load_trained_model
    from stts_train.eval.run import evaluate_samples
    from stts_train.models.tokenizer import load_tokenizer

    settings = [("STTS", stts_dir, "stts", 0.5), ("unpruned", base_dir, "none", 1.0)]
    settings += [("unpruned", base_dir, name, 0.5) for name in plan.training_free]
    results, overlays = [], {}
    models = {}
    for label, run_dir, pruner, keep in settings:
        job = load_config(
            config,
            [f"data.eval_path={store}/eval", *overrides]
            + (["model.stts.pruner=none"] if label == "unpruned" else []),
        )
        if run_dir not in models:
            models[run_dir] = load_trained_model(str(run_dir), job.model)
        ev = Evaluator(models[run_dir], load_tokenizer(job.model), pruner=pruner, keep_ratio=keep)
        samples = []
        for sample in evaluate_samples(
            ev, job, job.data.eval_path, max_questions=plan.eval_questions
        ):
            if (
                label == "STTS"
                and len(samples) < 3
                and (sample.evidence or {}).get("qtype") == "which"
            ):
                samples.append(sample)
        summary = {"model": label, "pruner": pruner, "keep_ratio": keep, **ev.result.summary()}
        results.append(summary)
        evidence_recall = summary["evidence_recall"]
        log(
            f"  {label:9s} {pruner:10s} keep {keep}: accuracy {summary['accuracy']:.3f}, evidence "
            f"recall {evidence_recall if evidence_recall is None else round(evidence_recall, 3)}"
        )
        if label == "STTS":
            overlays = {s.key: (s, ev.result.kept_masks[s.key]) for s in samples}
    return {"results": results, "overlay_samples": overlays}


def demo_vocabulary(out: Path, spec) -> list[str]:
    """Restrict the Qwen tokenizer to the demo's text (a ~100-token vocabulary instead of 152k),
    so the small model's step time is spent on the ViT and LLM, not on a huge embedding."""
    from stts_train.data.template import format_question
    from stts_train.models.tokenizer import build_subset, subset_overrides

    texts = ["user\n", "\n", "assistant\n"]
    for split in ("train", "eval"):
        for row in read_jsonl(out / "benchmark" / split / "annotations.jsonl"):
            texts.append("\n" + format_question(row["question"], row.get("choices")))
            texts += [row["answer"], *(row.get("choices") or [])]
    seconds = spec.source_frames / spec.fps
    for tenth in range(int(seconds * 10) + 11):
        texts += [f"{tenth / 10:.1f} ", f" {tenth / 10:.1f} "]
    base_ids, vocab_size = build_subset(texts)
    path = out / "vocabulary.json"
    path.write_text(json.dumps({"base_ids": base_ids, "vocab_size": vocab_size}))
    log(
        f"vocabulary subset: {vocab_size} Qwen tokens + {len(base_ids) - vocab_size} Molmo2 tokens "
        f"-> {path}"
    )
    return subset_overrides(str(path), base_ids, vocab_size)


def speed_sweep(config: Path, frames: tuple[int, ...]) -> list[dict]:
    """Prefill and train-step time at keep 0.5 vs 1.0 (same weights) on the CPU benchmark model,
    whose matmuls dominate; the demo model itself is too small for compute to show."""
    import argparse

    from stts_train.bench.step import run_bench

    args = argparse.Namespace(
        config=str(config),
        frames=",".join(map(str, frames)),
        keep="1.0,0.5",
        mode="train,prefill",
        text_tokens=32,
        samples=2,
        repeats=3,
        warmup=1,
        device="cpu",
        dtype="fp32",
        pruner_overhead=False,
        set=[],
    )
    rows = run_bench(args)["results"]
    base = {(r["frames"], r["mode"]): r["seconds_median"] for r in rows if r["keep_ratio"] == 1.0}
    for r in rows:
        r["base_seconds"] = base[(r["frames"], r["mode"])]
    return rows


def write_report(
    out,
    bench_info,
    plan,
    stts_dir,
    base_dir,
    evals,
    speed,
    resumed_from,
    killed_after,
    replay_exact,
    replay_keys,
    store,
    started,
    model_overrides,
) -> Path:
    import numpy as np

    from stts_train.config import load_config
    from stts_train.demo import report

    job = load_config(REPO_CONFIGS / "demo.yaml", model_overrides)
    stts_rows = [r for r in read_jsonl(stts_dir / "metrics.jsonl") if "train/loss" in r]
    base_rows = [r for r in read_jsonl(base_dir / "metrics.jsonl") if "train/loss" in r]
    # the resumed run re-logs the replayed steps; keep the latest entry per step
    stts_curve = list({r["step"]: r for r in stts_rows}.values())
    report.plot_losses(
        {"STTS keep 0.5": stts_curve, "unpruned": base_rows}, out / "loss_curves.png", resumed_from
    )
    report.plot_speed(speed, out / "speed_vs_frames.png")
    overlay_files = []
    for i, (key, (sample, keep)) in enumerate(evals["overlay_samples"].items()):
        frames = _raw_frames(sample, job)
        if frames is not None:
            name = f"kept_tokens_{i}.png"
            keep_np = keep.numpy().astype(bool)
            from stts_train.eval.evaluator import evidence_groups, source_frame_indices

            evidence = evidence_groups(
                job.model, sample.evidence, source_frame_indices(sample), frames.shape[1:3]
            )
            recall = (
                "n/a"
                if evidence is None or not evidence.any()
                else f"{int((evidence.numpy() & keep_np).sum())}/{int(evidence.sum())}"
            )
            report.overlay_frames(
                frames,
                keep_np,
                out / name,
                title=(
                    f"{key} (answer {sample.answer}): digit groups kept {recall}; dimmed = pruned"
                ),
            )
            overlay_files.append(name)
    stts_t, base_t = median_step_time(stts_curve), median_step_time(base_rows)
    facts = {
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}"
        ),
        "elapsed_s": time.monotonic() - started,
        "benchmark": bench_info,
        "eval": evals["results"],
        "training": {
            "steps": plan.steps,
            "base_steps": plan.base_steps,
            "ranks": job.parallel.num_ranks,
            "zero": job.parallel.zero_stage,
            "store": store,
            "stts_step_s": stts_t,
            "unpruned_step_s": base_t,
            "speedup": (base_t / stts_t) if stts_t and base_t else None,
            "killed_after": killed_after,
            "resumed_from": resumed_from,
            "replayed_steps": max(0, killed_after - resumed_from),
            "replay_exact": replay_exact,
            "replay_keys_equal": replay_keys,
        },
        "speed": speed,
        "overlays": overlay_files,
    }
    (out / "demo.json").write_text(
        json.dumps(facts, indent=1, default=lambda o: np.asarray(o).tolist())
    )
    path = report.write_markdown(out / "report.md", facts)
    log(f"report: {path}")
    return path


def _raw_frames(sample, job):
    """The sampled frames as uint8 images (undo the normalisation of the patches)."""
    import numpy as np

    v = job.model.vit
    pixels = sample.pixels_FNC.numpy()
    num_frames = pixels.shape[0]
    g, p = v.grid_size, v.patch_size
    x = (
        pixels.reshape(num_frames, g, g, p, p, 3)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(num_frames, g * p, g * p, 3)
    )
    x = x * np.array(v.image_std) + np.array(v.image_mean)
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)
