"""A tiny VLM with the Molmo2VLM contract, built only through a LayerFactory (engine tests).

ViT MLP (column -> row) on patches, a replicated scorer that gates the features, 2x2..3x3 group
mean pooling, connector MLP (column -> row), vocab-parallel embedding with the group features
spliced into the placeholder positions, an LLM MLP block with a causal running mean, and a
vocab-parallel head + cross-entropy. Every module runs on every rank in every step (dummy
inputs when a batch has no visual item).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX, Modality
from stts_train.data.batch import MicroBatch
from stts_train.models.common.layers import LocalLayerFactory

TOY_MODEL_OVERRIDES = {
    "vit": {
        "image_size": 28,
        "patch_size": 14,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "head_dim": 8,
        "num_layers": 4,
        "feature_layers": [-1],
    },
    "connector": {"pool_size": 2, "intermediate_size": 32},
    "llm": {
        "vocab_size": 64,
        "additional_vocab_size": 16,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 2,
        "head_dim": 8,
    },
    "stts": {"keep_ratio": 1.0, "prune_at": 1, "aux_loss_weight": 0.5},
    "tokens": {
        "image_patch_id": 64,
        "frame_start_id": 65,
        "frame_end_id": 66,
        "image_start_id": 67,
        "image_end_id": 68,
        "low_res_image_start_id": 69,
        "image_col_id": 70,
        "pad_id": 62,
        "eos_id": 63,
    },
}


@dataclass
class ToyOutput:
    ce_sum: torch.Tensor
    num_loss_tokens: torch.Tensor
    aux_loss: torch.Tensor
    stats: dict = field(default_factory=dict)


class ToyVLM(nn.Module):
    def __init__(self, model_cfg: ModelConfig, factory=None) -> None:
        super().__init__()
        f = factory or LocalLayerFactory()
        self.cfg, self.factory = model_cfg, f
        v, llm = model_cfg.vit, model_cfg.llm
        self.vit_fc1 = f.column(v.patch_dim, v.intermediate_size, True)
        self.vit_fc2 = f.row(v.intermediate_size, v.hidden_size, True)
        self.scorer = f.replicated(v.hidden_size, 1, True)
        self.conn_fc1 = f.column(v.hidden_size, model_cfg.connector.intermediate_size, True)
        self.conn_fc2 = f.row(model_cfg.connector.intermediate_size, llm.hidden_size, False)
        self.embed = f.vocab_embedding(llm.total_vocab_size, llm.hidden_size)
        self.mlp_fc1 = f.column(llm.hidden_size, llm.intermediate_size, False)
        self.mlp_fc2 = f.row(llm.intermediate_size, llm.hidden_size, True)
        self.norm = nn.LayerNorm(llm.hidden_size)
        self.head = f.vocab_head(llm.hidden_size, llm.total_vocab_size)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        mods = {
            "vit": [self.vit_fc1, self.vit_fc2],
            "scorer": [self.scorer],
            "connector": [self.conn_fc1, self.conn_fc2],
            "llm": [self.embed, self.mlp_fc1, self.mlp_fc2, self.norm, self.head],
        }
        return {k: [p for m in ms for p in m.parameters()] for k, ms in mods.items()}

    def forward(self, batch: MicroBatch) -> ToyOutput:
        cfg = self.cfg
        G, P = cfg.groups_per_frame, cfg.patches_per_group
        pixels = batch.pixels_FNC
        dummy = pixels.shape[0] == 0
        if dummy:  # every module runs on every rank: a zero frame, contribution multiplied by 0
            pixels = torch.zeros(1, cfg.vit.num_patches, cfg.vit.patch_dim, dtype=pixels.dtype)
        h = self.vit_fc2(F.gelu(self.vit_fc1(pixels)))  # (F, N, Dv)
        score = torch.sigmoid(self.scorer(h))  # (F, N, 1)
        h = h * (0.5 + score)
        groups = h.reshape(h.shape[0], G, P, -1).mean(2)  # (F, G, Dv)
        feats = self.conn_fc2(F.gelu(self.conn_fc1(groups))).reshape(-1, cfg.llm.hidden_size)
        video_frames = [
            m == Modality.VIDEO
            for m, n in zip(batch.item_modality_I.tolist(), batch.item_frames_I.tolist())
            for _ in range(n)
        ]
        if dummy or not any(video_frames):
            aux = 0.0 * score.sum()
        else:
            mask = torch.tensor(video_frames)
            aux = 0.5 * (score[mask].squeeze(-1) - 0.3).pow(2).mean()
        x = self.embed(batch.input_ids_S)  # (S, D)
        placeholder = batch.input_ids_S == cfg.tokens.image_patch_id
        if dummy:
            x = x + 0.0 * feats.sum()
        else:
            assert int(placeholder.sum()) == feats.shape[0], "misalignment"
            x = x.masked_scatter(placeholder[:, None], feats.to(x.dtype))
        # causal running mean inside each sample
        segs = []
        cu = batch.cu_seqlens_B1.tolist()
        for a, b in zip(cu[:-1], cu[1:]):
            seg = x[a:b]
            segs.append(seg.cumsum(0) / torch.arange(1, b - a + 1, dtype=seg.dtype)[:, None])
        x = x + torch.cat(segs)
        x = x + self.mlp_fc2(F.gelu(self.mlp_fc1(self.norm(x))))
        logits = self.head(x)
        ce = self.factory.cross_entropy(logits, batch.labels_S)
        n_local = (batch.labels_S != IGNORE_INDEX).sum()
        ce_sum = ce.sum()
        n_patches = float(batch.pixels_FNC.shape[0] * cfg.vit.num_patches)
        stats = {
            "vit_patches_in": n_patches,
            "vit_block_tokens": n_patches * cfg.vit.num_layers,
            "llm_tokens": float(batch.input_ids_S.numel()),
            "image_tokens_in": float(placeholder.sum()),
            "image_tokens_kept": float(placeholder.sum()),
        }
        if os.environ.get("TOY_NAN_KEY") in batch.sample_keys:
            ce_sum = ce_sum * float("nan")
        return ToyOutput(ce_sum, n_local, aux, stats)

    def num_flops_per_token(self) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())
