"""Functions run inside gloo ranks by `stts_train.testing.run_distributed_test`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from toy_model import TOY_MODEL_OVERRIDES, ToyVLM

from stts_train.config import config_from_dict
from stts_train.config.base import merge_dicts


def toy_config(run_dir: str, **sections: Any) -> dict:
    base = {
        "name": "toy",
        "model": TOY_MODEL_OVERRIDES,
        "train": {
            "num_steps": 5,
            "seed": 0,
            "run_dir": run_dir,
            "micro_batches_per_step": 1,
            "synthetic": {"samples_per_microbatch": 2, "max_frames": 3},
        },
        "optim": {
            g: {"lr": 1e-2, "warmup_steps": 2} for g in ("vit", "connector", "llm", "scorer")
        },
        "checkpoint": {"every": 100, "keep_last": 2},
        "metrics": {"wandb_mode": "disabled", "progress_bar": False},
        "parallel": {"zero_stage": 1, "precision": "fp32"},
    }
    return merge_dicts(base, sections)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def train_worker(
    cfg_dict: dict, gather: bool = True, data_kwargs: dict | None = None, use_toy: bool = True
) -> dict:
    """Train per config; returns losses, sample keys and (rank 0) the full final weights."""
    from stts_train.checkpoint.consolidate import gather_full_state_dict
    from stts_train.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    trainer = Trainer(cfg, model_fn=ToyVLM if use_toy else None, data_kwargs=data_kwargs)
    code = trainer.fit()
    weights = (
        gather_full_state_dict(
            trainer.par.model, trainer.par.tp_layout, trainer.dims.tp, trainer.dims.tp_group
        )
        if gather
        else None
    )
    run_dir = Path(cfg.run_dir)
    out = {"code": code, "rank": trainer.dims.rank}
    if trainer.dims.rank == 0:
        out["losses"] = [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
        out["metrics"] = read_jsonl(run_dir / "metrics.jsonl")
        out["keys"] = [r["keys"] for r in read_jsonl(run_dir / "samples.jsonl")]
        out["weights"] = weights
    trainer.close()
    return out


# blocking collectives of torch.distributed a training step could issue
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "gather",
    "gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "scatter",
    "scatter_object_list",
    "monitored_barrier",
)


def _counting(name: str, fn: Any, calls: list, step: dict, torch_dir: str, ours_dir: str) -> Any:
    """`fn` (a real collective) that first records (step, name, called from stts_train?): the
    caller is the first frame outside torch, so DeepSpeed's own reductions count as not ours."""
    import functools

    @functools.wraps(fn)
    def counted(*args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(torch_dir):
            frame = frame.f_back
        ours = frame is not None and frame.f_code.co_filename.startswith(ours_dir)
        calls.append((step["now"], name, ours))
        return fn(*args, **kwargs)

    return counted


def collectives_worker(cfg_dict: dict) -> dict:
    """Train per config with every torch.distributed collective counted; returns the calls per
    step (ours = made from stts_train code) and, on rank 0, the metrics and samples records."""
    import torch
    import torch.distributed as dist

    import stts_train
    from stts_train.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    trainer = Trainer(cfg, model_fn=ToyVLM)
    calls: list = []
    step = {"now": 0}
    fetch = trainer.data.next_microbatches

    def next_microbatches(index: int) -> list:
        step["now"] = index + 1  # everything from this data fetch on belongs to step index + 1
        return fetch(index)

    trainer.data.next_microbatches = next_microbatches
    torch_dir, ours_dir = str(Path(torch.__file__).parent), str(Path(stts_train.__file__).parent)
    originals = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}
    for name, fn in originals.items():
        setattr(dist, name, _counting(name, fn, calls, step, torch_dir, ours_dir))
    try:
        code = trainer.fit()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    ours: dict[int, list[str]] = {s: [] for s in range(1, cfg.train.num_steps + 1)}
    theirs: dict[int, int] = dict.fromkeys(ours, 0)
    for s, name, mine in calls:
        if s in ours:
            if mine:
                ours[s].append(name)
            else:
                theirs[s] += 1
    out: dict[str, Any] = {"code": code, "ours": ours, "theirs": theirs}
    if trainer.dims.rank == 0:
        run_dir = Path(cfg.run_dir)
        out["metrics"] = read_jsonl(run_dir / "metrics.jsonl")
        out["keys"] = read_jsonl(run_dir / "samples.jsonl")
    trainer.close()
    return out
