"""Cost model: modelled forward FLOPs of one sample, per component, from the model config.

Counting rules (forward pass, 2 FLOPs per multiply-add; backward is ~2x forward for every term,
so a constant factor that cancels in balancing):

- ViT, per patch and block: 2*(4*D^2 + 2*D*I) linear; per frame sequence of L patches and
  block: 4*L^2*D attention (QK^T and AV, bidirectional). Blocks 0..prune_at+1 run on all N
  patches of every frame; later blocks on the kept patches of each frame (one varlen sequence
  per frame). Per-frame kept counts depend on the scores, so the quadratic term uses frame 0 at
  N and the other frames sharing the rest evenly (exact in expectation of the linear term,
  a lower bound for the quadratic one). Images run every block on all patches. Patch embedding
  2*C*D per patch.
- Scorer (STTS on, videos only): per group, the pooler (q from the mean, k/v from pool^2
  patches, out projection) and the 3-layer MLP on [z_prev, z].
- Connector, per kept group: attention pooling over the concatenated feature layers and the
  SwiGLU projector.
- LLM, per token: q/k/v/o + SwiGLU per layer; attention per sample segment of L tokens and
  layer: 2*H*hd*L^2 (causal half of 4*H*hd*L^2); the LM head runs on loss tokens only (as
  `Molmo2VLM` does).

Calibration. Modelled cost = sum over components of weight * FLOPs; the weights are seconds per
FLOP of each kernel family (linear layers, attention, ...). Defaults are 1.0 (pure FLOPs),
which balances well when every family runs near the same efficiency. To fit them:

1. run `stts-train bench step` over several settings (frames, keep ratio, text length) so the
   components vary independently; every measured step gives the micro-batch's samples and the
   step time;
2. for each measurement, sum `CostModel.breakdown(meta)` over the step's samples (one rank's
   samples when the JSON gives per-rank times);
3. call `fit_weights([(breakdown_sum, seconds), ...])`: non-negative least squares over the
   component families; keep families the data cannot separate tied (pass `groups`);
4. store the result in the cost model (`CostModel(cfg, weights=...)`), or as JSON with
   `CostWeights.to_dict` / `CostWeights.from_dict`.
Only ratios matter for balancing, so the fit's scale is irrelevant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from stts_train.config.model import ModelConfig
from stts_train.constants import Modality
from stts_train.data.lengths import Geometry, SampleMeta, kept_groups_per_item

COMPONENTS = (
    "vit_linear",
    "vit_attention",
    "scorer",
    "connector",
    "llm_linear",
    "llm_attention",
    "lm_head",
)
VIT_STAGE = ("vit_linear", "vit_attention", "scorer", "connector")
LLM_STAGE = ("llm_linear", "llm_attention", "lm_head")


@dataclass
class CostWeights:
    """Seconds (or any common unit) per modelled FLOP of each component family."""

    vit_linear: float = 1.0
    vit_attention: float = 1.0
    scorer: float = 1.0
    connector: float = 1.0
    llm_linear: float = 1.0
    llm_attention: float = 1.0
    lm_head: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> CostWeights:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown cost weight(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in data.items()})


@dataclass
class SampleCost:
    """Weighted cost of one sample split by pipeline stage (ViT side incl. scorer + connector)."""

    vit: float
    llm: float

    @property
    def total(self) -> float:
        return self.vit + self.llm


class CostModel:
    """Per-sample FLOPs from a `ModelConfig` (see the module docstring for the counting rules)."""

    def __init__(
        self, cfg: ModelConfig, weights: CostWeights | None = None, keep_ratio: float | None = None
    ):
        self.cfg = cfg
        self.geom = Geometry.from_model_config(cfg, keep_ratio)
        self.weights = weights or CostWeights()
        self.stts_on = cfg.stts.pruner == "stts"
        v, c, lm = cfg.vit, cfg.connector, cfg.llm
        d = v.hidden_size
        self.vit_block_linear = 2.0 * (4 * d * d + 2 * d * v.intermediate_size)
        self.vit_attn_coef = 4.0 * d  # * L^2 per frame sequence and block
        self.patch_embed = 2.0 * v.patch_dim * d
        self.vit_blocks = v.num_layers
        self.pre_blocks = min(cfg.stts.prune_at + 2, v.num_layers)
        self.post_blocks = v.num_layers - self.pre_blocks
        pool2 = cfg.patches_per_group
        hs = cfg.stts.scorer_hidden_size or v.intermediate_size
        pooler = d * d + 2 * pool2 * d * d + d * d + 2 * pool2 * d
        self.scorer_per_group = 2.0 * (pooler + 2 * d * hs + hs * hs + hs)
        din = len(v.feature_layers) * d
        dp = c.pooling_num_heads * c.pooling_head_dim
        pooling = din * dp + 2 * pool2 * din * dp + dp * dp + 2 * pool2 * dp
        projector = 2 * dp * c.intermediate_size + c.intermediate_size * lm.hidden_size
        self.connector_per_group = 2.0 * (pooling + projector)
        e, qd, kvd = lm.hidden_size, lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim
        self.llm_token_linear = (
            2.0 * lm.num_layers * (e * qd + 2 * e * kvd + qd * e + 3 * e * lm.intermediate_size)
        )
        self.llm_attn_coef = 2.0 * lm.num_layers * qd  # * L^2 per sample segment
        self.lm_head_per_token = 2.0 * e * lm.total_vocab_size

    # ------------------------------------------------------------------------------------------
    def breakdown(self, meta: SampleMeta) -> dict[str, float]:
        """Forward FLOPs of one sample by component (unweighted)."""
        g = self.geom
        n, pool2 = g.patches_per_frame, g.patches_per_group
        out = dict.fromkeys(COMPONENTS, 0.0)
        kept = kept_groups_per_item(meta, g)
        for m, t, k in zip(meta.modalities, meta.frames, kept):
            patches = t * n
            out["vit_linear"] += patches * self.patch_embed
            if m == Modality.VIDEO and self.stts_on:
                kept_patches = k * pool2
                out["vit_linear"] += self.vit_block_linear * (
                    self.pre_blocks * patches + self.post_blocks * kept_patches
                )
                out["vit_attention"] += self.vit_attn_coef * (
                    self.pre_blocks * t * n * n
                    + self.post_blocks * _post_frame_sq(kept_patches, t, n)
                )
                out["scorer"] += self.scorer_per_group * t * g.groups_per_frame
            else:
                out["vit_linear"] += self.vit_block_linear * self.vit_blocks * patches
                out["vit_attention"] += self.vit_attn_coef * self.vit_blocks * t * n * n
            out["connector"] += self.connector_per_group * k
        length = meta.num_text_tokens + sum(kept)
        out["llm_linear"] = self.llm_token_linear * length
        out["llm_attention"] = self.llm_attn_coef * float(length) ** 2
        out["lm_head"] = self.lm_head_per_token * meta.num_loss_tokens
        return out

    def weighted(self, flops: dict[str, float]) -> SampleCost:
        w = self.weights
        vit = sum(getattr(w, k) * flops[k] for k in VIT_STAGE)
        llm = sum(getattr(w, k) * flops[k] for k in LLM_STAGE)
        return SampleCost(vit=vit, llm=llm)

    def sample_cost(self, meta: SampleMeta) -> SampleCost:
        return self.weighted(self.breakdown(meta))

    def llm_cost_of_length(self, length: np.ndarray | float) -> np.ndarray | float:
        """Weighted LLM cost of a segment of `length` tokens without loss tokens (padding)."""
        w = self.weights
        return (
            w.llm_linear * self.llm_token_linear * length
            + w.llm_attention * self.llm_attn_coef * length**2
        )

    def padding_frame_cost(self) -> float:
        """Weighted ViT cost of one padding frame (blocks up to prune_at+1; later blocks drop
        it)."""
        n = self.geom.patches_per_frame
        blocks = self.pre_blocks if self.stts_on else self.vit_blocks
        w = self.weights
        return (
            w.vit_linear * (self.patch_embed + self.vit_block_linear * blocks) * n
            + w.vit_attention * self.vit_attn_coef * blocks * n * n
        )


def _post_frame_sq(kept_patches: int, frames: int, n: int) -> float:
    """Estimated sum over frames of (kept patches in the frame)^2: frame 0 full, rest even."""
    if frames <= 1:
        return float(kept_patches) ** 2
    rest = max(kept_patches - n, 0) / (frames - 1)
    return float(n) ** 2 + (frames - 1) * rest**2


def fit_weights(
    records: list[tuple[dict[str, float], float]],
    groups: dict[str, tuple[str, ...]] | None = None,
) -> CostWeights:
    """Non-negative least-squares fit of the cost weights from measured steps.

    `records`: (summed `CostModel.breakdown` of a step's samples, measured seconds). `groups`
    ties components that share one weight (default: ViT side = linear+scorer+connector and
    attention; LLM side = linear+lm_head and attention), since a few measurements cannot tell
    every family apart. Returns the weights normalised so the LLM linear weight is 1.
    """
    if groups is None:
        groups = {
            "vit_dense": ("vit_linear", "scorer", "connector"),
            "vit_attention": ("vit_attention",),
            "llm_dense": ("llm_linear", "lm_head"),
            "llm_attention": ("llm_attention",),
        }
    names = list(groups)
    if len(records) < len(names):
        raise ValueError(
            f"fit_weights needs at least {len(names)} measurements, got {len(records)}"
        )
    x = np.array(
        [[sum(f.get(c, 0.0) for c in groups[g]) for g in names] for f, _ in records],
        dtype=np.float64,
    )
    y = np.array([s for _, s in records], dtype=np.float64)
    scale = np.maximum(x.max(axis=0), 1e-30)
    active = list(range(len(names)))
    coef = np.zeros(len(names))
    while active:  # drop negative coefficients one at a time (small active-set NNLS)
        sol, *_ = np.linalg.lstsq(x[:, active] / scale[active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol / scale[active]
            break
        active.pop(int(np.argmin(sol)))
    ref = (
        coef[names.index("llm_dense")]
        if "llm_dense" in names and coef[names.index("llm_dense")] > 0
        else (coef.max() if coef.max() > 0 else 1.0)
    )
    out = {}
    for g, c in zip(names, coef):
        for comp in groups[g]:
            out[comp] = float(c / ref)
    return CostWeights.from_dict(out)
