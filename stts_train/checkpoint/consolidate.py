"""Full (unsharded) fp32 state dicts in the tp=1 parameter names, from a live engine or from files.

- `gather_full_state_dict` (collective: every rank must call it): ZeRO-3 partitions of a live
  engine are gathered with `deepspeed.zero.GatheredParameters`; tensor-parallel shards are
  all-gathered over the TP group and concatenated along their split dimension. Used by tests and
  in-process evaluation.
- `consolidate` (offline, one process): for each tensor-parallel rank of a committed checkpoint,
  DeepSpeed's zero_to_fp32 merges the data-parallel ZeRO partitions (fp32 master weights) of that
  rank; then the TP shards are concatenated along the split dimension recorded in the
  checkpoint's meta.json (`tp_layout`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from stts_train.checkpoint.manager import resolve_step_dir
from stts_train.errors import CheckpointError


def gather_full_state_dict(
    model: nn.Module, tp_layout: dict[str, int], tp_size: int, tp_group: Any = None
) -> dict[str, torch.Tensor]:
    """The live model's full state dict on every rank (`tp_group`: the tensor-parallel group)."""
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            local = param.detach().float().clone()
        if name in tp_layout and tp_size > 1:
            parts = [torch.empty_like(local) for _ in range(tp_size)]
            dist.all_gather(parts, local.contiguous(), group=tp_group)
            local = torch.cat(parts, dim=tp_layout[name])
        out[name] = local.cpu()
    persistent = set(model.state_dict().keys())
    for name, buf in model.named_buffers():
        if name in persistent:
            out[name] = buf.detach().cpu().clone()
    return out


def consolidate(step_dir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(full fp32 state dict in our names, meta, config yaml) of a committed checkpoint dir."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    meta = json.loads((step_dir / "meta.json").read_text())
    if meta.get("zero_stage", 0) == 0:
        raise CheckpointError(
            f"{step_dir} was written at ZeRO stage 0; consolidation supports stages 1-3 "
            "(train with parallel.zero_stage=1, 2 or 3)"
        )
    tp, layout = int(meta["tp_size"]), meta.get("tp_layout", {})
    tag = step_dir.name
    per_rank: list[dict[str, torch.Tensor]] = []
    with tempfile.TemporaryDirectory(prefix="stts-consolidate-") as tmp:
        for t in range(tp):
            # zero_to_fp32 reads every shard under <dir>/<tag>: give it a view of one TP rank's
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


def consolidate_path(checkpoint: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """`consolidate` of a step dir, checkpoint root or run dir (local or s3://, see
    `manager.resolve_step_dir`); remote files are downloaded to a scratch dir removed after."""
    with tempfile.TemporaryDirectory(prefix="stts-consolidate-dl-") as scratch:
        return consolidate(resolve_step_dir(checkpoint, Path(scratch)))
