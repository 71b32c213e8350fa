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
        "train": {"num_steps": 5, "seed": 0, "run_dir": run_dir, "micro_batches_per_step": 1,
                  "model": "toy_model:ToyVLM",
                  "synthetic": {"samples_per_microbatch": 2, "max_frames": 3}},
        "optim": {g: {"lr": 1e-2, "warmup_steps": 2} for g in ("vit", "connector", "llm", "scorer")},
        "checkpoint": {"every": 100, "keep_last": 2},
        "metrics": {"wandb_mode": "disabled", "progress_bar": False},
        "parallel": {"zero_stage": 1, "precision": "fp32"},
    }
    return merge_dicts(base, sections)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def train_worker(cfg_dict: dict, gather: bool = True, data_kwargs: dict | None = None,
                 use_toy: bool = True) -> dict:
    """Train per config; returns losses, sample keys and (rank 0) the full final weights."""
    from stts_train.checkpoint.consolidate import gather_full_state_dict
    from stts_train.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    trainer = Trainer(cfg, model_fn=ToyVLM if use_toy else None, data_kwargs=data_kwargs)
    code = trainer.fit()
    weights = gather_full_state_dict(
        trainer.par.model, trainer.par.tp_layout, trainer.dims.tp, trainer.dims.tp_group
    ) if gather else None
    run_dir = Path(cfg.run_dir)
    out = {"code": code, "rank": trainer.dims.rank}
    if trainer.dims.rank == 0:
        out["losses"] = [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
        out["metrics"] = read_jsonl(run_dir / "metrics.jsonl")
        out["keys"] = [r["keys"] for r in read_jsonl(run_dir / "samples.jsonl")]
        out["weights"] = weights
    trainer.close()
    return out
