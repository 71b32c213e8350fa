"""Inference with a training-free pruner (VisionZip, FastVID, HoliTom, SToP, random, heuristics).

Shape legend (AGENTS.md#shape-legend): F frames (flat), T frames of one video, N patches per
frame (a pruner's `_TN`: its grid cells, here the G groups), C patch values, G groups (= LLM
tokens) per frame, K kept patches, D ViT width (or head dim), E LLM width, H heads, M tokens a
pruner outputs for one video; in `keys_FGK`, as in the pruner input's `keys_TNK`, K is the key
width.

The ViT runs unpruned. The attention each patch *receives* at `attention_layer` (mean over heads
and queries; SigLIP has no CLS token) and that layer's head-averaged keys are pooled to the 3x3
groups exactly like the features, then every video's connector outputs (T, G, E) go through the
pruner. The pruner's tokens, ordered by (frame, position), fill the first placeholders of their
frame; the remaining placeholders of that frame are dropped, so per-frame markers stay in place,
positions are renumbered and the LLM sees exactly the pruner's token count.
"""

from __future__ import annotations

import math

import torch

from stts_train.constants import Modality
from stts_train.data.batch import MicroBatch
from stts_train.errors import LayoutError
from stts_train.models.vlm import Molmo2VLM, VLMOutput
from stts_train.pruning.base import Grid, PrunerInput, TokenPruner, get_pruner
from stts_train.pruning.stts import layout_from_items

# Reference constants tuned for LLaVA-OV's 196 tokens per frame, rescaled to our grid.
REFERENCE_TOKENS_PER_FRAME = 196
SINK_TOP_REFERENCE = 20


def build_pruner(name: str, tokens_per_frame: int, **params) -> TokenPruner:
    """`get_pruner` with grid-dependent defaults scaled from the reference's 196-token frames
    (SToP-VisionZip skips the top 20 sink positions there: ~10% of a frame)."""
    if name == "stop_visionzip" and "sink_top" not in params:
        params["sink_top"] = max(
            1, round(SINK_TOP_REFERENCE * tokens_per_frame / REFERENCE_TOKENS_PER_FRAME)
        )
    return get_pruner(name, **params)


def received_attention(block, x_FND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, N) attention received per patch and (F, N, Dh) head-averaged keys in `block`'s
    self-attention (one frame at a time, so memory stays O(H N^2))."""
    attn = block.self_attn
    heads, head_dim = attn.local_heads, attn.head_dim
    received, keys = [], []
    for x_ND in x_FND:
        h = block.layer_norm1(x_ND)
        q = attn.q_proj(h).view(-1, heads, head_dim).transpose(0, 1)
        k = attn.k_proj(h).view(-1, heads, head_dim).transpose(0, 1)
        probs_HNN = torch.softmax(
            (q.float() @ k.float().transpose(1, 2)) / math.sqrt(head_dim), dim=-1
        )
        received.append(probs_HNN.mean(dim=(0, 1)))
        keys.append(k.mean(dim=0))
    return torch.stack(received), torch.stack(keys)


@torch.no_grad()
def forward_with_pruner(
    model: Molmo2VLM,
    batch: MicroBatch,
    pruner: TokenPruner,
    *,
    keep_ratio: float,
    attention_layer: int = -1,
    return_logits: bool = True,
) -> VLMOutput:
    """Prefill `batch` with `pruner` applied to every video (images are never pruned)."""
    cfg = model.cfg
    vit = model.vision
    num_frames = batch.pixels_FNC.shape[0]
    if num_frames == 0:
        return model(batch, return_logits=return_logits, keep_ratio=1.0)
    layer = attention_layer if attention_layer >= 0 else cfg.vit.num_layers + attention_layer
    if not 0 <= layer < cfg.vit.num_layers:
        raise LayoutError(
            f"attention_layer={attention_layer} is outside the ViT's {cfg.vit.num_layers} blocks"
        )
    frames = batch.item_frames_I.tolist()
    modality = batch.item_modality_I.tolist()
    layout = layout_from_items(frames, modality, 1.0, cfg.groups_per_frame)
    pixels = batch.pixels_FNC.to(vit.patch_embedding.weight.dtype)

    captured: dict[str, torch.Tensor] = {}

    def capture(module, args, output):
        captured["received_FN"], captured["keys_FND"] = received_attention(
            module, args[0].view(num_frames, cfg.vit.num_patches, -1)
        )

    hook = vit.layers[layer].register_forward_hook(capture)
    try:
        vis = vit(pixels, layout)
    finally:
        hook.remove()
    gidx = vit.group_index_GP
    num_groups = gidx.shape[0]
    all_groups = torch.arange(num_frames * num_groups, device=pixels.device)
    group_patches = (all_groups // num_groups)[:, None] * cfg.vit.num_patches + gidx[
        all_groups % num_groups
    ]
    features_FGE = model.connector(vis.features_KD, group_patches).view(num_frames, num_groups, -1)
    attention_FG = captured["received_FN"][:, gidx].mean(-1)
    keys_FGK = captured["keys_FND"][:, gidx].mean(-2)

    side = cfg.vit.grid_size // cfg.connector.pool_size
    kept_features, kept_per_frame = [], []
    kept_mask_FG = torch.zeros(num_frames, num_groups, dtype=torch.bool, device=pixels.device)
    start = 0
    for n, m in zip(frames, modality):
        feats = features_FGE[start : start + n]
        if m == Modality.VIDEO and keep_ratio < 1.0:
            out = pruner.prune(
                PrunerInput(
                    features_TND=feats,
                    attention_TN=attention_FG[start : start + n],
                    grid=Grid(side, side),
                    keep_ratio=keep_ratio,
                    keys_TNK=keys_FGK[start : start + n],
                    global_features_TG=feats.mean(dim=1),
                )
            )
            order = torch.argsort(out.frame_M * num_groups + out.position_M, stable=True)
            kept_features.append(out.features_MD[order])
            kept_per_frame += torch.bincount(out.frame_M, minlength=n).tolist()
            kept_mask_FG[start + out.frame_M, out.position_M] = True
        elif m in (Modality.VIDEO, Modality.IMAGE):
            kept_features.append(feats.reshape(n * num_groups, -1))
            kept_per_frame += [num_groups] * n
            kept_mask_FG[start : start + n] = True
        else:
            raise LayoutError(f"visual item modality {m} is not 1 (image) or 2 (video)")
        start += n
    keep_group_FG = (
        torch.arange(num_groups, device=pixels.device)[None, :]
        < torch.tensor(kept_per_frame, device=pixels.device)[:, None]
    )
    out = model.forward_llm(
        batch, keep_group_FG, torch.cat(kept_features), return_logits=return_logits
    )
    out.kept_mask_FG = kept_mask_FG
    return out
