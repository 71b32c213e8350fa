"""`stts-train export CHECKPOINT OUT`: consolidate ZeRO (+TP) shards into a Hugging Face Molmo2 dir.

CHECKPOINT may be a committed step dir (`.../checkpoints/step-00000100`), a checkpoint root
(its `latest` is used) or a run dir (`<run_dir>/checkpoints/latest`); local or s3://.

Consolidation: for each tensor-parallel rank, DeepSpeed's zero_to_fp32 merges the data-parallel
ZeRO partitions (fp32 master weights) of that rank; then the TP shards are concatenated along
the split dimension recorded in the checkpoint's meta.json (`tp_layout`). The result is a full
state dict in our parameter names, handed to `models.hf_interop.export_hf`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="consolidate a sharded checkpoint into a Hugging Face Molmo2 directory")
    p.add_argument("checkpoint", help="step dir, checkpoint root or run dir (local or s3://)")
    p.add_argument("out", help="output directory (config.json + safetensors)")
    p.set_defaults(func=run)


def resolve_step_dir(path: str, scratch: Path) -> Path:
    """A local committed step directory for `path` (downloads from s3://)."""
    from stts_train.errors import CheckpointError

    if "://" in path:
        import fsspec

        fs = fsspec.filesystem(path.split("://", 1)[0])
        root = path.rstrip("/")
        if not fs.exists(f"{root}/meta.json"):
            for cand in (root, f"{root}/checkpoints"):
                if fs.exists(f"{cand}/latest"):
                    root = f"{cand}/{fs.cat_file(f'{cand}/latest').decode().strip()}"
                    break
        local = scratch / root.rsplit("/", 1)[-1]
        fs.get(root, str(local), recursive=True)
        path = str(local)
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "meta.json").is_file():
            return cand
        if (cand / "latest").is_file():
            return cand / (cand / "latest").read_text().strip()
    raise CheckpointError(f"{path} is not a checkpoint: no meta.json or latest pointer found")


def consolidate(step_dir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(full fp32 state dict in our names, meta, config yaml) of a committed checkpoint."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from stts_train.errors import CheckpointError

    meta = json.loads((step_dir / "meta.json").read_text())
    if meta.get("zero_stage", 0) == 0:
        raise CheckpointError("export supports ZeRO stages 1-3; this checkpoint was written at stage 0")
    tp, layout = int(meta["tp_size"]), meta.get("tp_layout", {})
    tag = step_dir.name
    per_rank: list[dict[str, torch.Tensor]] = []
    with tempfile.TemporaryDirectory(prefix="stts-export-") as tmp:
        for t in range(tp):
            view = Path(tmp) / f"tp{t}" / tag
            view.mkdir(parents=True)
            files = sorted(step_dir.glob(f"*mp_rank_{t:02d}_*states.pt"))
            if not files:
                raise CheckpointError(f"{step_dir}: no shard files for tensor-parallel rank {t}")
            for f in files:
                (view / f.name).symlink_to(f.resolve())
            sd = get_fp32_state_dict_from_zero_checkpoint(str(view.parent), tag=tag)
            per_rank.append({k: v.float() for k, v in sd.items()})
    full: dict[str, torch.Tensor] = {}
    for name, tensor in per_rank[0].items():
        if name in layout and tp > 1:
            full[name] = torch.cat([sd[name] for sd in per_rank], dim=int(layout[name]))
        else:
            full[name] = tensor
    return full, meta, (step_dir / "config.yaml").read_text()


def run(args: argparse.Namespace) -> int:
    import yaml

    from stts_train.config import config_from_dict
    from stts_train.models.hf_interop import export_hf

    with tempfile.TemporaryDirectory(prefix="stts-export-dl-") as scratch:
        step_dir = resolve_step_dir(args.checkpoint, Path(scratch))
        state, meta, config_yaml = consolidate(step_dir)
    cfg = config_from_dict(yaml.safe_load(config_yaml), source=str(step_dir / "config.yaml"))
    out = export_hf(state, cfg.model, args.out)
    print(f"exported {step_dir} (step {meta['step']}, {len(state)} tensors) to {out}")
    return 0
