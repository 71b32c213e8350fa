"""AdamW parameter groups (ViT, connector, LLM, scorer) and their warm-up + cosine schedules.

Each model group gets its own peak LR and warm-up; when weight decay is on, 1-D parameters (norms,
biases) go to a `<group>_no_decay` twin with decay 0. The LR factor of optimizer step s (0-based,
s completed steps) is:

    warm-up  (s < W):  (s + 1) / W
    cosine   (s >= W): f + (1 - f) * 0.5 * (1 + cos(pi * (s - W) / max(1, N - W)))

with N = train.num_steps and f = optim.final_lr_fraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from stts_train.config.engine import GroupLr, OptimConfig
from stts_train.config.job import JobConfig

GROUP_NAMES = ("vit", "connector", "llm", "scorer")


def lr_factor(step: int, warmup_steps: int, num_steps: int, final_fraction: float) -> float:
    """LR multiplier after `step` completed optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, num_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def build_param_groups(groups: dict[str, list[nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    """Optimizer param-group dicts (with a `name` and the group's `warmup_steps`).

    Raises:
        ValueError: a parameter appears in two groups, or a group name is unknown.
    """
    unknown = sorted(set(groups) - set(GROUP_NAMES))
    if unknown:
        raise ValueError(
            f"model.param_groups() returned unknown groups {unknown}; expected {GROUP_NAMES}"
        )
    seen: set[int] = set()
    out: list[dict] = []
    for name in GROUP_NAMES:
        params = [p for p in groups.get(name, []) if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter of group {name!r} is also in another group")
            seen.add(id(p))
        spec: GroupLr = getattr(cfg, name)
        decay = [p for p in params if p.ndim >= 2 or cfg.weight_decay == 0]
        no_decay = [p for p in params if p.ndim < 2 and cfg.weight_decay != 0]
        for suffix, ps, wd in (("", decay, cfg.weight_decay), ("_no_decay", no_decay, 0.0)):
            if ps:
                out.append(
                    dict(
                        params=ps,
                        name=name + suffix,
                        lr=spec.lr,
                        initial_lr=spec.lr,
                        weight_decay=wd,
                        warmup_steps=spec.warmup_steps,
                    )
                )
    return out


def check_all_params_grouped(model: nn.Module, groups: dict[str, list[nn.Parameter]]) -> None:
    """Every trainable parameter must be in exactly one group (else it would never train)."""
    grouped = {id(p) for ps in groups.values() for p in ps}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if missing:
        raise ValueError(f"parameters missing from model.param_groups(): {missing[:8]}")


def build_optimizer(param_groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    # foreach=False: one deterministic code path regardless of how ZeRO flattens the groups
    return torch.optim.AdamW(
        param_groups,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        foreach=False,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, num_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR with a warm-up + cosine lambda per param group."""
    lambdas: list[Callable[[int], float]] = []
    for group in optimizer.param_groups:
        warmup = int(group.get("warmup_steps", 0))
        lambdas.append(_Schedule(warmup, num_steps, cfg.final_lr_fraction))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


class _Schedule:
    """Picklable LR lambda (LambdaLR stores callable objects' __dict__ in its state)."""

    def __init__(self, warmup_steps: int, num_steps: int, final_fraction: float) -> None:
        self.warmup_steps = warmup_steps
        self.num_steps = num_steps
        self.final_fraction = final_fraction

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.num_steps, self.final_fraction)


def build_optimizer_and_scheduler(
    cfg: JobConfig, model: nn.Module, groups: dict[str, list[nn.Parameter]]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `groups` (the model's `param_groups()`) and its per-group schedule.

    Bind `cfg` (functools.partial) to get the `optimizer_fn` that `parallel.parallelize` takes.
    """
    check_all_params_grouped(model, groups)
    optimizer = build_optimizer(build_param_groups(groups, cfg.optim), cfg.optim)
    return optimizer, build_scheduler(optimizer, cfg.optim, cfg.train.num_steps)
