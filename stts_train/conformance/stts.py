"""Run our STTS implementation on the golden vectors (docs/stts.md#golden-vectors).

Golden batches are B rows of T frame slots, each row holding example slots (num_images,
modality) followed by padding frames. We map a row onto our flat item layout: the row's examples
in slot order, then one non-prunable pseudo-item for the padding frames. Budgets use the exact
floor(G * rho * n) (docs/stts.md#budget). Both scorer variants are implemented: the reference's
flat previous frame (`scores`) and the per-example reset (`scores_example_reset`). Our ViT does
not refill lonely frames, so `vit_forward.hidden_last` is compared on `compare_mask`, as the
case's rule prescribes for implementations without refill.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch

from stts_train.config.model import (
    ConnectorConfig,
    LlmConfig,
    ModelConfig,
    SpecialTokens,
    SttsConfig,
    VitConfig,
)
from stts_train.conformance.common import Case, CaseResult, check_rule, discover_cases, load_case
from stts_train.constants import Modality
from stts_train.models.common.layers import LocalLayerFactory
from stts_train.models.stts_scorer import TemporalTokenScorer
from stts_train.models.vit import VisionTransformer
from stts_train.pruning.budget import exact_ratio
from stts_train.pruning.stts import (
    FrameLayout,
    group_index,
    group_to_patch,
    layout_from_budgets,
    neighbor_cosine,
    select_groups,
    soft_bias,
    temporal_aux_loss,
)

GRID, POOL = 27, 3


def golden_layout(
    case: Case, num_groups: int = (GRID // POOL) ** 2
) -> tuple[FrameLayout, torch.Tensor, torch.Tensor]:
    """FrameLayout for the golden (B, K) layout, plus per-slot budgets and the real-frame mask."""
    num_images = case.tensor("num_images")
    modality = case.tensor("modality")
    rows, slots = num_images.shape
    cfg = case.meta.get("config", {})
    frames_total = None
    for name in ("hidden", "scores", "x0"):
        if name in case.tensors:
            frames_total = case.tensors[name].shape[0]
            break
    frames_per_row = int(cfg.get("frames_per_row") or frames_total // rows)
    rho = exact_ratio(float(cfg.get("prune_ratio", 0.0)))
    item_frames, budgets = [], []
    valid = torch.zeros(rows * frames_per_row, dtype=torch.bool)
    budget_BK = torch.zeros(rows, slots, dtype=torch.int64)
    for b in range(rows):
        used = 0
        for k in range(slots):
            n = max(int(num_images[b, k]), 0)
            budget = 0
            if int(modality[b, k]) == Modality.VIDEO and n > 0:
                budget = int(Fraction(num_groups * n) * rho // 1)
            budget_BK[b, k] = budget
            if n:
                item_frames.append(n)
                budgets.append(budget)
                valid[b * frames_per_row + used : b * frames_per_row + used + n] = True
                used += n
        if used < frames_per_row:
            item_frames.append(frames_per_row - used)
            budgets.append(0)
    return layout_from_budgets(item_frames, budgets), budget_BK, valid


def _flat_prev_reset(num_frames: int) -> torch.Tensor:
    reset = torch.zeros(num_frames, dtype=torch.bool)
    reset[0] = True
    return reset


def _load_scorer(case: Case, prefix: str = "") -> TemporalTokenScorer:
    cfg = case.meta["config"]
    scorer = TemporalTokenScorer(
        int(cfg["D"]), int(cfg["num_heads"]), int(cfg["head_dim"]), int(cfg["mlp_hidden"])
    )
    state = {
        k[len(prefix) :]: v
        for k, v in case.tensors.items()
        if k.startswith(prefix + "patch_token_pooler.") or k.startswith(prefix + "mlp.")
    }
    scorer.load_state_dict(state, strict=True)
    return scorer.eval()


def run_scorer(case: Case) -> dict[str, torch.Tensor]:
    hidden = case.tensor("hidden")
    layout, _, _ = golden_layout(case)
    scorer = _load_scorer(case)
    gidx = group_index(GRID, POOL)
    with torch.no_grad():
        return {
            "scores": scorer(hidden, gidx, _flat_prev_reset(hidden.shape[0])),
            "scores_example_reset": scorer(hidden, gidx, layout.first_frame_F),
        }


def run_selection(case: Case) -> dict[str, torch.Tensor]:
    scores = case.tensor("scores")
    layout, budget_BK, valid = golden_layout(case)
    keep_group = select_groups(scores, layout) & valid[:, None]
    return {
        "keep_group": keep_group,
        "keep_patch": group_to_patch(keep_group, group_index(GRID, POOL), GRID * GRID),
        "prunable_frame": layout.prunable_F,
        "prune_budget": budget_BK,
    }


def run_soft_bias(case: Case) -> dict[str, torch.Tensor]:
    scores = case.tensor("scores").clone().requires_grad_(True)
    layout, _, _ = golden_layout(case)
    gidx = group_index(GRID, POOL)
    bias_FG = soft_bias(scores, layout, groups_per_side=GRID // POOL, axis="row")
    bias = group_to_patch(bias_FG, gidx, GRID * GRID)
    out = {"bias": bias.detach(), "prunable_frame": layout.prunable_F}
    if "bias_weight" in case.tensors:
        (bias * case.tensor("bias_weight")).sum().backward()
        out["grad_scores"] = scores.grad
    return out


def run_aux_loss(case: Case) -> dict[str, torch.Tensor]:
    hidden = case.tensor("hidden").clone().requires_grad_(True)
    scores = case.tensor("scores").clone().requires_grad_(True)
    layout, _, _ = golden_layout(case)
    if "prunable_frame" in case.tensors:
        layout.prunable_F = case.tensor("prunable_frame").to(torch.bool)
    gidx = group_index(GRID, POOL)
    coefficient = float(case.meta["config"].get("coefficient", 0.5))
    loss = temporal_aux_loss(hidden, scores, layout, gidx, coefficient=coefficient)
    loss.backward()
    with torch.no_grad():
        cos = neighbor_cosine(hidden.detach(), gidx)
    return {
        "loss": loss.detach(),
        "grad_scores": scores.grad,
        "grad_hidden": hidden.grad,
        "neighbor_cos": cos,
    }


def _vit_for_case(case: Case) -> VisionTransformer:
    cfg = case.meta["config"]
    d, heads, head_dim = int(cfg["D"]), int(cfg["num_heads"]), int(cfg["head_dim"])
    layers = int(cfg["num_layers"])
    keep = 1.0 - float(cfg["prune_ratio"])
    model_cfg = ModelConfig(
        vit=VitConfig(
            image_size=GRID * 14,
            patch_size=14,
            hidden_size=d,
            intermediate_size=int(cfg["mlp_hidden"]),
            num_heads=heads,
            head_dim=head_dim,
            num_layers=layers,
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
            feature_layers=(layers - 1,),
        ),
        connector=ConnectorConfig(
            pool_size=POOL, intermediate_size=8, pooling_num_heads=heads, pooling_head_dim=head_dim
        ),
        llm=LlmConfig(
            vocab_size=8,
            additional_vocab_size=0,
            hidden_size=8,
            intermediate_size=8,
            num_layers=1,
            num_heads=1,
            num_kv_heads=1,
            head_dim=8,
        ),
        stts=SttsConfig(
            keep_ratio=max(keep, 1e-6),
            prune_at=int(cfg["prune_at"]),
            scorer_hidden_size=int(cfg["mlp_hidden"]),
        ),
        tokens=SpecialTokens(**{name: 0 for name in vars(SpecialTokens())}),
        attention_backend="sdpa_loop",
    )
    vit = VisionTransformer(model_cfg, LocalLayerFactory())
    state = {}
    renames = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "attention_norm": "layer_norm1",
        "ffn_norm": "layer_norm2",
        "feed_forward.w1": "mlp.fc1",
        "feed_forward.w2": "mlp.fc2",
    }
    for name, tensor in case.tensors.items():
        if case.meta["tensors"][name]["role"] != "weight":
            continue
        if name.startswith("temporal_token_scorer."):
            state["scorer." + name[len("temporal_token_scorer.") :]] = tensor
            continue
        new = name.replace("resblocks.", "layers.")
        for old, rep in renames.items():
            new = new.replace(f".{old}.", f".{rep}.")
        state[new] = tensor
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [
        m
        for m in missing
        if m not in ("patch_embedding.weight", "patch_embedding.bias", "positional_embedding")
    ]
    if missing or unexpected:
        raise KeyError(f"golden ViT weights do not map: missing {missing}, unexpected {unexpected}")
    return vit.eval()


def run_vit_forward(case: Case) -> dict[str, torch.Tensor]:
    x0 = case.tensor("x0")
    layout, _, valid = golden_layout(case)
    vit = _vit_for_case(case)
    gidx = group_index(GRID, POOL)
    with torch.no_grad():
        out = vit.forward_embedded(x0, layout, frame_valid_F=valid, return_debug=True)
        hidden_last = x0.new_zeros(x0.shape)
        hidden_last[out.keep_patch_FN] = out.debug["hidden_last_KD"]
        prune_at = int(case.meta["config"]["prune_at"])
        scores_flat = vit.scorer(_hidden_at(vit, x0, prune_at), gidx, _flat_prev_reset(x0.shape[0]))
    return {
        "scores": scores_flat,
        "scores_example_reset": out.scores_FG,
        "keep_patch": out.keep_patch_FN,
        "prunable_frame": layout.prunable_F,
        "bias": group_to_patch(out.debug["bias_FG"], gidx, GRID * GRID),
        "hidden_bias_block": out.debug["hidden_bias_block_FND"],
        "hidden_last": hidden_last,
    }


def _hidden_at(vit: VisionTransformer, x0: torch.Tensor, block: int) -> torch.Tensor:
    """Output of `block` with every frame dense (for the flat-variant scorer)."""
    num_frames, num_patches, dim = x0.shape
    lengths = [num_patches] * num_frames
    cu = torch.arange(num_frames + 1, dtype=torch.int32) * num_patches
    x = x0.reshape(-1, dim)
    for i in range(block + 1):
        x = vit.layers[i](x, cu, lengths)
    return x.view(num_frames, num_patches, dim)


RUNNERS = {
    "scorer": run_scorer,
    "selection": run_selection,
    "soft_bias": run_soft_bias,
    "aux_loss": run_aux_loss,
    "vit_forward": run_vit_forward,
}


def run_case(json_path: str | Path) -> CaseResult:
    """Run and check one STTS golden case; a runner that raises gives a failed result."""
    json_path = Path(json_path)
    case = load_case(json_path)
    component = case.meta.get("component", json_path.parent.name)
    runner = RUNNERS.get(component)
    if runner is None:
        return CaseResult(component, case.name, False, f"unknown component {component!r}")
    try:
        actual = runner(case)
    except Exception as e:  # a crash is a failed case, reported with its cause
        return CaseResult(component, case.name, False, f"raised {type(e).__name__}: {e}")
    rules = {}
    for name, rule in case.compare.items():
        rules[name] = check_rule(name, actual.get(name), case.tensor(name), rule, case.tensors)
    passed = bool(rules) and all(r.ok for r in rules.values())
    details = "; ".join(r.message for r in rules.values())
    return CaseResult(component, case.name, passed, details, rules)


def run_stts_goldens(golden_dir: str | Path) -> list[CaseResult]:
    """Run every case under ``golden_dir/<component>/<case>.json``; one CaseResult per case."""
    return [run_case(p) for p in discover_cases(golden_dir)]
