"""Render the DeepSpeed JSON config from our typed JobConfig (the YAML is the only source).

The client optimizer (torch AdamW from `train.optim`) and LR scheduler are passed to
`deepspeed.initialize` directly, so the JSON holds no "optimizer"/"scheduler" blocks. Gradient
accumulation is driven by the train step through `set_gradient_accumulation_boundary`, so the
JSON's accumulation count is only DeepSpeed's bookkeeping (1 micro-batch per pass).
"""

from __future__ import annotations

from typing import Any

from stts_train.config.job import JobConfig


def render_deepspeed_config(cfg: JobConfig, dp_size: int) -> dict[str, Any]:
    """DeepSpeed config dict for `cfg` on `dp_size` data-parallel ranks."""
    p = cfg.parallel
    zero: dict[str, Any] = {"stage": p.zero_stage}
    if p.zero_stage >= 1:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=False,  # deterministic reduction order; CPU gains nothing from overlap
            reduce_scatter=True,
            reduce_bucket_size=p.bucket_size,
            allgather_bucket_size=p.bucket_size,
        )
    if p.zero_stage == 3:
        zero.update(
            stage3_param_persistence_threshold=0,  # gather every parameter: ZeRO-3 really exercised
            stage3_prefetch_bucket_size=p.bucket_size,
            stage3_gather_16bit_weights_on_model_save=False,
        )
    micro_batch = 1
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * dp_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": p.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }


_DATACLASS_PATCHED = False


def teach_zero3_dataclass_outputs() -> None:
    """Let ZeRO-3's backward hooks see tensors inside dataclass module outputs.

    ZeRO-3 wraps every module's output tensors so it can re-gather that module's parameters
    before its backward. DeepSpeed only looks inside tuples, lists and dicts; a module that
    returns a dataclass (our model's `VisionOutput`) would have its parameters released and
    fail in backward ("size of tensor a (0) must match"). This teaches the hook to recurse into
    dataclass fields. Idempotent; model code stays free of DeepSpeed concerns.
    """
    global _DATACLASS_PATCHED
    if _DATACLASS_PATCHED:
        return
    import dataclasses

    from deepspeed.runtime.zero import parameter_offload

    original = parameter_offload.apply_to_tensors_only

    def apply(function: Any, value: Any, warning_msg_fn: Any = None) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                f.name: apply(function, getattr(value, f.name), warning_msg_fn)
                for f in dataclasses.fields(value)
                if f.init
            }
            return dataclasses.replace(value, **changes)
        if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
            return value.__class__(apply(function, v, warning_msg_fn) for v in value)
        if isinstance(value, dict):
            for key in value:
                value[key] = apply(function, value[key], warning_msg_fn)
            return value
        return original(function, value, warning_msg_fn)

    parameter_offload.apply_to_tensors_only = apply
    _DATACLASS_PATCHED = True
