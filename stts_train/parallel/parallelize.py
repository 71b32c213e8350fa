"""parallelize(): the one place where a model is built for, sharded over and wrapped by the engine.

Fixed order (each step is logged on rank 0):
1. CPU shims (megatron-core/DeepSpeed on CPU), only when the device is CPU.
2. Build the full tp=1 reference model with `train.seed` (plain layers, single device).
3. tp > 1: build the model again through `MegatronLayerFactory` and copy each rank's shard of the
   reference weights into it (column: output rows, row: input columns, vocab: rows), so the
   unsharded weights are identical to the tp=1 model for any layout.
4. The optimizer and LR scheduler from the caller's `optimizer_fn` (the trainer passes
   `train.optim.build_optimizer_and_scheduler`: AdamW over the ViT/connector/LLM/scorer groups
   with their warm-up + cosine schedules); this package never imports `stts_train.train`.
5. ZeRO-3 only: let DeepSpeed's backward hooks see tensors inside dataclass module outputs.
6. `deepspeed.initialize` with the rendered ZeRO config and `ParallelDims` as the mpu (DeepSpeed
   reduces over the data-parallel group and counts TP shards once in the grad norm).

The model is never built inside `deepspeed.zero.Init`: megatron re-initialises weights after
construction and those writes would be lost under ZeRO-3 (shared notes/stack.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stts_train.config.job import JobConfig
from stts_train.config.model import ModelConfig
from stts_train.models.common.layers import LocalLayerFactory
from stts_train.parallel.dims import ParallelDims
from stts_train.parallel.tp_layers import MegatronLayerFactory, tp_partition_dims
from stts_train.parallel.zero import render_deepspeed_config, teach_zero3_dataclass_outputs

log = logging.getLogger(__name__)

ModelFn = Callable[[ModelConfig, Any], nn.Module]
OptimizerFn = Callable[
    [nn.Module, dict[str, list[nn.Parameter]]],
    tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
]
"""(model, its `param_groups()`) -> (client optimizer, LR scheduler) handed to DeepSpeed."""


def training_device() -> torch.device:
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard_full_state_dict(
    full: dict[str, torch.Tensor], model: nn.Module, tp_rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """This TP rank's slice of every tensor of a full (tp=1) state dict, keyed like `model`."""
    split = tp_partition_dims(model)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, target in own.items():
        if name.endswith("_extra_state"):  # megatron layer metadata, not a weight
            out[name] = target
            continue
        if name not in full:
            raise KeyError(f"tp model parameter {name!r} has no counterpart in the tp=1 model")
        tensor = full[name]
        if name in split:
            tensor = tensor.chunk(tp_size, dim=split[name])[tp_rank]
        if tensor.shape != target.shape:
            raise ValueError(
                f"{name}: shard shape {tuple(tensor.shape)} != tp model shape {tuple(target.shape)}"
            )
        out[name] = tensor
    return out


def build_model(cfg: JobConfig, dims: ParallelDims, model_fn: ModelFn) -> nn.Module:
    """Steps 2-3: the (possibly tensor-parallel) model with the tp=1 model's weights."""
    torch.manual_seed(cfg.train.seed)
    reference = model_fn(cfg.model, LocalLayerFactory())
    if cfg.model.hf_checkpoint:
        # Initialise from a Hugging Face Molmo2 dir (e.g. `stts-train export` of an earlier run);
        # a scorer missing there keeps its fresh init, as in the STTS reference. A resumed run's
        # checkpoint overwrites these weights afterwards.
        from stts_train.checkpoint.hf import load_hf, load_into

        _, state = load_hf(cfg.model.hf_checkpoint, cfg.model)
        load_into(reference, state)
    if dims.tp == 1:
        return reference
    full = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    del reference
    torch.manual_seed(cfg.train.seed)
    model = model_fn(cfg.model, MegatronLayerFactory(dims))
    model.load_state_dict(shard_full_state_dict(full, model, dims.tp_rank, dims.tp), strict=True)
    return model


@dataclass
class Parallelized:
    engine: Any
    """The DeepSpeed engine (forward, backward, step, save/load_checkpoint)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ds_config: dict[str, Any]
    tp_layout: dict[str, int]
    """Parameter name -> tensor-parallel split dim (saved with checkpoints for export)."""
    param_counts: dict[str, int]
    """Full (unsharded) parameter count per optimizer group (for MFU)."""


def parallelize(
    cfg: JobConfig, dims: ParallelDims, optimizer_fn: OptimizerFn, model_fn: ModelFn | None = None
) -> Parallelized:
    """Build, shard and wrap the model for `dims` (the only wrapping site; see module doc)."""
    import deepspeed

    from stts_train.parallel.cpu_shims import install_cpu_shims

    device = training_device()
    say = log.info if dims.is_rank0 else log.debug
    if install_cpu_shims(device):
        say("parallelize: CPU shims for megatron-core/DeepSpeed installed")
    if model_fn is None:
        from stts_train.models.vlm import Molmo2VLM

        model_fn = Molmo2VLM
    model = build_model(cfg, dims, model_fn)
    say(
        "parallelize: built %s with seed %d (%s)",
        type(model).__name__,
        cfg.train.seed,
        dims.describe(),
    )
    groups = model.param_groups()
    tp_layout = tp_partition_dims(model)
    names = {id(p): n for n, p in model.named_parameters()}
    param_counts = {
        g: sum(p.numel() * (dims.tp if names[id(p)] in tp_layout else 1) for p in ps)
        for g, ps in groups.items()
    }
    optimizer, scheduler = optimizer_fn(model, groups)
    ds_config = render_deepspeed_config(cfg, dims.dp)
    if cfg.parallel.zero_stage == 3:
        teach_zero3_dataclass_outputs()
    say(
        "parallelize: deepspeed.initialize ZeRO-%d %s",
        cfg.parallel.zero_stage,
        cfg.parallel.precision,
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model.to(device),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        mpu=dims,
        dist_init_required=False,
    )
    return Parallelized(engine, model, optimizer, scheduler, ds_config, tp_layout, param_counts)
