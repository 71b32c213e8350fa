"""Full (unsharded) fp32 state dict of a live engine's model, in the tp=1 parameter names.

Collective: every rank must call it. ZeRO-3 partitions are gathered with
`deepspeed.zero.GatheredParameters`; tensor-parallel shards are all-gathered over the TP group
and concatenated along their split dimension. Used by tests and in-process evaluation; offline
consolidation of checkpoint files lives in `commands/export.py`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from stts_train.parallel.dims import ParallelDims


def gather_full_state_dict(model: nn.Module, dims: ParallelDims, tp_layout: dict[str, int]) -> dict[str, torch.Tensor]:
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            local = param.detach().float().clone()
        if name in tp_layout and dims.tp > 1:
            parts = [torch.empty_like(local) for _ in range(dims.tp)]
            dist.all_gather(parts, local.contiguous(), group=dims.tp_group)
            local = torch.cat(parts, dim=tp_layout[name])
        out[name] = local.cpu()
    persistent = set(model.state_dict().keys())
    for name, buf in model.named_buffers():
        if name in persistent:
            out[name] = buf.detach().cpu().clone()
    return out
