"""Molmo2-architecture video VLM with STTS: ViT (+ scorer) -> connector on kept groups -> LLM.

Shape legend (AGENTS.md#shape-legend): S packed LLM tokens before pruning, S' after, F frames
(flat), N patches per frame, C patch values, G groups per frame, P patches per group, X rows picked
by a mask (kept groups = LLM image tokens; loss tokens at the LM head), E LLM width, B samples,
V vocabulary.

Layout (docs/stts.md#llm-compaction): the micro-batch carries every placeholder; after the ViT the
placeholders (and labels) of pruned groups are dropped and positions renumbered 0..len-1 per
sample, so every later LLM layer sees exactly the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX, Modality
from stts_train.data.batch import MicroBatch
from stts_train.errors import LayoutError
from stts_train.models.common.attention import cu_seqlens_from_lengths
from stts_train.models.common.layers import LayerFactory, LocalLayerFactory
from stts_train.models.connector import Connector
from stts_train.models.llm import LanguageModel
from stts_train.models.vit import VisionTransformer
from stts_train.pruning.stts import FrameLayout, layout_from_items


@dataclass
class VLMOutput:
    """Sums and counts for the loss; the step loss is formed by the trainer
    (`stts_train/train/loss.py`), which alone knows the step's global token count."""

    ce_sum: torch.Tensor
    """Summed token cross-entropy over this micro-batch's loss tokens."""
    num_loss_tokens: torch.Tensor
    """() int64 loss tokens of this micro-batch (a tensor: no host sync in the forward)."""
    aux_loss: torch.Tensor
    """STTS temporal aux loss of this micro-batch (unweighted); on a text-only micro-batch a
    zero that still depends on every visual parameter, so ZeRO-3 sees each module in backward."""
    logits: torch.Tensor | None = None
    """(S', V) full logits over the kept sequence (only with return_logits=True)."""
    keep_group_FG: torch.Tensor | None = None
    """Which placeholders stayed, per frame (STTS: exactly the kept groups)."""
    kept_mask_FG: torch.Tensor | None = None
    """Grid positions the kept tokens stand for, when they differ from `keep_group_FG`
    (training-free pruners that merge tokens)."""
    scores_FG: torch.Tensor | None = None
    kept_input_ids: torch.Tensor | None = None
    kept_cu_seqlens: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


class Molmo2VLM(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory | None = None) -> None:
        super().__init__()
        factory = factory or LocalLayerFactory()
        self.cfg = cfg
        self.factory = factory
        self.vision = VisionTransformer(cfg, factory)
        self.connector = Connector(cfg, factory)
        self.llm = LanguageModel(cfg, factory)
        self.keep_ratio = cfg.stts.keep_ratio if cfg.stts.pruner == "stts" else 1.0
        self.init_weights()

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if ".scorer" in f".{name}":
                continue  # the scorer has its own init (docs/stts.md#scorer)
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                nn.init.normal_(
                    module.weight, std=fan_in**-0.5 if self.cfg.init_scheme == "fan_in" else std
                )
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        nn.init.normal_(self.vision.positional_embedding, std=std)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer group: vit, scorer, connector, llm."""
        groups: dict[str, list[nn.Parameter]] = {
            "vit": [],
            "scorer": [],
            "connector": [],
            "llm": [],
        }
        for name, param in self.named_parameters():
            if name.startswith("vision.scorer."):
                groups["scorer"].append(param)
            elif name.startswith("vision."):
                groups["vit"].append(param)
            elif name.startswith("connector."):
                groups["connector"].append(param)
            else:
                groups["llm"].append(param)
        return groups

    # ----------------------------------------------------------------------------------------------
    def frame_layout(self, batch: MicroBatch, keep_ratio: float | None = None) -> FrameLayout:
        keep = self.keep_ratio if keep_ratio is None else keep_ratio
        frames = batch.item_frames_I.tolist()
        modality = batch.item_modality_I.tolist()
        for i, (n, m) in enumerate(zip(frames, modality)):
            if m not in (Modality.IMAGE, Modality.VIDEO):
                raise LayoutError(
                    f"visual item {i} has modality {m}; expected 1 (image) or 2 (video)"
                )
            if m == Modality.VIDEO and n == 1 and keep < 1.0:
                raise LayoutError(
                    f"visual item {i} is a one-frame video; frame 0 is never pruned, so send it as "
                    "an image (modality 1) or use keep_ratio=1.0"
                )
        if sum(frames) != batch.pixels_FNC.shape[0]:
            raise LayoutError(
                f"items declare {sum(frames)} frames but pixels_FNC holds "
                f"{batch.pixels_FNC.shape[0]}"
            )
        return layout_from_items(frames, modality, keep, self.cfg.groups_per_frame)

    def forward(
        self,
        batch: MicroBatch,
        *,
        return_logits: bool = False,
        keep_ratio: float | None = None,
    ) -> VLMOutput:
        cfg = self.cfg
        layout = self.frame_layout(batch, keep_ratio)
        pixels_FNC = batch.pixels_FNC
        num_real_frames = pixels_FNC.shape[0]
        expected = cfg.vit.num_patches, cfg.vit.patch_dim
        if num_real_frames and tuple(pixels_FNC.shape[1:]) != expected:
            raise LayoutError(
                f"pixels_FNC has shape {tuple(pixels_FNC.shape)}; expected (F, {expected[0]}, "
                f"{expected[1]})"
            )
        dummy = num_real_frames == 0
        if dummy:
            # Text-only micro-batch: every rank still runs every module (ZeRO-3 gathers by hooks).
            pixels_FNC = pixels_FNC.new_zeros(1, *expected)
            layout = layout_from_items([1], [Modality.IMAGE], 1.0, cfg.groups_per_frame)
        pixels_FNC = pixels_FNC.to(self.vision.patch_embedding.weight.dtype)

        vis = self.vision(pixels_FNC, layout)
        group_patches_XP = self._kept_group_patches(vis.keep_group_FG, vis.keep_patch_FN)
        image_features_XE = self.connector(vis.features_KD, group_patches_XP)
        aux_loss = vis.aux_loss
        if dummy:
            # a zero that keeps the dummy frame's ViT, scorer and connector in the graph
            aux_loss = 0.0 * image_features_XE.sum() + 0.0 * vis.aux_loss
            image_features_XE = image_features_XE[:0]

        keep_group_FG = None if dummy else vis.keep_group_FG
        out = self.forward_llm(batch, keep_group_FG, image_features_XE, return_logits=return_logits)
        kept_patches = int(vis.keep_patch_FN.sum()) if not dummy else 0
        out.aux_loss = aux_loss
        out.scores_FG = None if dummy else vis.scores_FG
        out.stats.update(
            {
                "vit_frames": float(num_real_frames),
                "vit_patches_in": float(num_real_frames * cfg.vit.num_patches),
                "vit_patches_kept": float(kept_patches),
                "vit_block_tokens": float(sum(vis.block_tokens)) if not dummy else 0.0,
            }
        )
        return out

    def forward_llm(
        self,
        batch: MicroBatch,
        keep_group_FG: torch.Tensor | None,
        image_features_XE: torch.Tensor,
        *,
        return_logits: bool = False,
    ) -> VLMOutput:
        """LLM half: drop pruned placeholders, add the image features, run the decoder, CE sum.

        `keep_group_FG` (None for text-only) says which placeholders stay, frame-major and in
        placeholder order; `image_features_XE` holds one feature per kept placeholder, in order.
        """
        cfg = self.cfg
        ids_S, labels_S, positions_S, cu_seqlens, lengths, patch_S = self._compact(
            batch, keep_group_FG
        )
        embeds_SE = self.llm.embed_tokens(ids_S)
        if image_features_XE.shape[0] != int(patch_S.sum()):
            raise LayoutError(
                f"misalignment: {image_features_XE.shape[0]} image features for "
                f"{int(patch_S.sum())} kept placeholders"
            )
        embeds_SE = embeds_SE.masked_scatter(
            patch_S[:, None].expand_as(embeds_SE),
            (embeds_SE[patch_S] + image_features_XE.to(embeds_SE.dtype)).reshape(-1),
        )
        bidirectional_S = None
        if cfg.llm.image_attention == "bidirectional":
            block_ids = torch.tensor(cfg.tokens.image_block_ids, device=ids_S.device)
            bidirectional_S = torch.isin(ids_S, block_ids)
        hidden_SE = self.llm.hidden_states(
            embeds_SE, positions_S, cu_seqlens, lengths, bidirectional_S
        )

        loss_mask_S = labels_S != IGNORE_INDEX
        logits_XV = self.llm.logits(hidden_SE[loss_mask_S])
        ce_sum = self.factory.cross_entropy(logits_XV, labels_S[loss_mask_S]).sum()
        logits = self.factory.gather_vocab(self.llm.logits(hidden_SE)) if return_logits else None
        stats = {
            "image_tokens_in": float(0 if keep_group_FG is None else keep_group_FG.numel()),
            "image_tokens_kept": float(image_features_XE.shape[0]),
            "llm_tokens": float(ids_S.numel()),
        }
        return VLMOutput(
            ce_sum=ce_sum,
            num_loss_tokens=loss_mask_S.sum(),
            aux_loss=ce_sum.new_zeros(()),
            logits=logits,
            keep_group_FG=keep_group_FG,
            kept_input_ids=ids_S,
            kept_cu_seqlens=cu_seqlens,
            stats=stats,
        )

    # ----------------------------------------------------------------------------------------------
    def _kept_group_patches(
        self, keep_group_FG: torch.Tensor, keep_patch_FN: torch.Tensor
    ) -> torch.Tensor:
        """(X, P) rows into the kept-patch sequence for each kept group, frame-major, raster
        order."""
        num_frames, num_patches = keep_patch_FN.shape
        group_index_GP = self.vision.group_index_GP
        kept_rank_S = torch.cumsum(keep_patch_FN.reshape(-1).long(), 0) - 1
        frame_offset = (
            torch.arange(num_frames, device=keep_patch_FN.device)[:, None, None] * num_patches
        )
        flat_FGP = frame_offset + group_index_GP[None]
        return kept_rank_S[flat_FGP[keep_group_FG]]

    def _compact(self, batch: MicroBatch, keep_group_FG: torch.Tensor | None):
        """Drop pruned placeholders (option B) and renumber positions per sample."""
        cfg = self.cfg
        ids_S = batch.input_ids_S
        patch_S = ids_S == cfg.tokens.image_patch_id
        num_placeholders = int(patch_S.sum())
        expected = 0 if keep_group_FG is None else keep_group_FG.numel()
        if num_placeholders != expected:
            raise LayoutError(
                f"misalignment: input_ids hold {num_placeholders} image placeholders but the "
                f"visual items produce {expected} features "
                f"({expected // max(cfg.groups_per_frame, 1)} frames x {cfg.groups_per_frame} "
                "groups); each frame needs exactly groups_per_frame placeholders"
            )
        keep_S = ~patch_S
        if num_placeholders:
            keep_S = keep_S.clone()
            keep_S[patch_S] = keep_group_FG.reshape(-1)
        lengths_B = (batch.cu_seqlens_B1[1:] - batch.cu_seqlens_B1[:-1]).long()
        if int(lengths_B.sum()) != ids_S.numel():
            raise LayoutError(
                f"cu_seqlens covers {int(lengths_B.sum())} tokens but input_ids_S has "
                f"{ids_S.numel()}"
            )
        sample_S = torch.repeat_interleave(
            torch.arange(lengths_B.numel(), device=ids_S.device), lengths_B
        )
        kept_sample = sample_S[keep_S]
        kept_lengths_B = torch.bincount(kept_sample, minlength=lengths_B.numel())
        cu_seqlens = cu_seqlens_from_lengths(kept_lengths_B)
        positions_S = (
            torch.arange(kept_sample.numel(), device=ids_S.device)
            - cu_seqlens[:-1].long()[kept_sample]
        )
        return (
            ids_S[keep_S],
            batch.labels_S[keep_S],
            positions_S,
            cu_seqlens,
            kept_lengths_B.tolist(),
            patch_S[keep_S],
        )
