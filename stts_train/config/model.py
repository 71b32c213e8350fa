"""Model config: Molmo2 architecture (SigLIP-style ViT, attention-pool connector, Qwen3 LLM) +
STTS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stts_train.config.base import check


@dataclass(kw_only=True)
class VitConfig:
    """SigLIP-style ViT: learned absolute position embeddings, no CLS token, pre-LN blocks."""

    image_size: int = 378
    """Square input size in pixels (frames are resized to this)."""
    patch_size: int = 14
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    head_dim: int = 72
    num_layers: int = 25
    """Blocks instantiated; must be > the deepest layer in `feature_layers`."""
    layer_norm_eps: float = 1e-6
    feature_layers: tuple[int, ...] = (24, 18)
    """Blocks whose outputs are concatenated (in this order) for the connector, as Hugging Face's
    `adapter_config.vision_feature_layer`: 0-based, negative counts from the last instantiated
    block. Molmo2 reads blocks 24 and 18 (layers -3 and -9 of the 27-layer SigLIP)."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        check(
            self.image_size % self.patch_size == 0,
            f"model.vit.image_size={self.image_size} must be a multiple of "
            f"patch_size={self.patch_size}",
        )
        check(
            self.num_heads * self.head_dim == self.hidden_size,
            f"model.vit: num_heads*head_dim={self.num_heads * self.head_dim} must equal "
            f"hidden_size={self.hidden_size}",
        )
        for layer in self.resolved_feature_layers:
            check(
                0 <= layer < self.num_layers,
                f"model.vit.feature_layers={list(self.feature_layers)} resolve to "
                f"{self.resolved_feature_layers}; each must be in [0, "
                f"num_layers={self.num_layers})",
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2

    @property
    def resolved_feature_layers(self) -> tuple[int, ...]:
        return tuple(
            layer if layer >= 0 else self.num_layers + layer for layer in self.feature_layers
        )


@dataclass(kw_only=True)
class ConnectorConfig:
    """Concatenate the feature layers, 3x3 attention pooling with a mean query, SwiGLU projector."""

    pool_size: int = 3
    intermediate_size: int = 9728
    """Projector (SwiGLU) width."""
    pooling_num_heads: int = 16
    pooling_head_dim: int = 72
    """Attention-pooling heads over the concatenated features (HF: vision hidden size heads)."""


@dataclass(kw_only=True)
class LlmConfig:
    """Qwen3-style decoder: RMSNorm, QK-norm, GQA, RoPE, SwiGLU."""

    vocab_size: int = 151936
    additional_vocab_size: int = 128
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 5_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qk_norm: bool = True
    image_attention: Literal["causal", "bidirectional"] = "causal"
    """Image tokens of a sample attend causally (varlen kernels apply) or to each other in both
    directions, as Molmo2 checkpoints were trained (needs a masked kernel: slower on GPU); the
    tokens are `SpecialTokens.image_block_ids`. Unset with `model.hf_checkpoint`: the checkpoint's
    (bidirectional for Molmo2, what an stts-train export recorded)."""

    def __post_init__(self) -> None:
        check(
            self.num_heads % self.num_kv_heads == 0,
            f"model.llm.num_heads={self.num_heads} must be a multiple of "
            f"num_kv_heads={self.num_kv_heads}",
        )

    @property
    def total_vocab_size(self) -> int:
        return self.vocab_size + self.additional_vocab_size


@dataclass(kw_only=True)
class SttsConfig:
    """STTS: learned spatio-temporal token scoring inside the ViT (docs/stts.md#decisions)."""

    keep_ratio: float = 0.5
    """Fraction of each video's 3x3 groups kept (1.0 = no pruning). Pruned per video =
    floor(G * (1 - keep_ratio) * T), frame 0 always kept."""
    prune_at: int = 3
    """The scorer reads the output of this ViT block; block prune_at+1 gets the soft bias."""
    aux_loss_weight: float = 0.5
    """Weight of the temporal auxiliary loss 0.5*MSE(s, 1 - cos(prev, cur)) (0 disables it)."""
    detach_aux_target: bool = False
    """Detach the cosine-distance target (the reference does not)."""
    rescale_axis: Literal["row", "frame"] = "row"
    """Min-max rescale of scores for the soft bias: per group row (reference) or per frame."""
    rescale_bias_min: float = 0.1353352832366127
    """Lower end of the rescaled score, e^-2, so the bias lies in [-2, 0]."""
    scorer_hidden_size: int | None = None
    """Scorer MLP width; None = the ViT intermediate size (reference)."""
    pruner: str = "stts"
    """Token pruner: 'stts' (learned) or 'none'; training-free pruners are chosen at eval time."""

    def __post_init__(self) -> None:
        check(
            0.0 < self.keep_ratio <= 1.0,
            f"model.stts.keep_ratio={self.keep_ratio} must be in (0, 1]; use 1.0 (or pruner=none) "
            "to disable pruning",
        )
        check(self.prune_at >= 0, f"model.stts.prune_at={self.prune_at} must be >= 0")
        check(
            self.aux_loss_weight >= 0,
            f"model.stts.aux_loss_weight={self.aux_loss_weight} must be >= 0",
        )
        check(
            0.0 < self.rescale_bias_min < 1.0,
            f"model.stts.rescale_bias_min={self.rescale_bias_min} must be in (0, 1)",
        )


@dataclass(kw_only=True)
class SpecialTokens:
    """Ids of Molmo2's special tokens (set from the tokenizer by `models.tokenizer`)."""

    image_start_id: int = 151936
    image_end_id: int = 151937
    image_patch_id: int = 151938
    image_col_id: int = 151939
    low_res_image_start_id: int = 151940
    frame_start_id: int = 151943
    frame_end_id: int = 151944
    image_low_id: int | None = None
    """<im_low> (config.json `image_low_res_id`); None: the vocabulary has none (our prompts never
    use it)."""
    pad_id: int = 151643
    eos_id: int = 151645

    @property
    def image_block_ids(self) -> tuple[int, ...]:
        """The tokens that attend to each other under bidirectional image attention: exactly those
        transformers' Molmo2 processor marks with mm_token_type_ids=1 (patches, column tokens, image
        and frame start/end, low-res start and <im_low>)."""
        ids = (
            self.image_patch_id,
            self.image_col_id,
            self.image_start_id,
            self.low_res_image_start_id,
            self.frame_start_id,
            self.image_end_id,
            self.frame_end_id,
            self.image_low_id,
        )
        return tuple(i for i in ids if i is not None)


@dataclass(kw_only=True)
class ModelConfig:
    vit: VitConfig = field(default_factory=VitConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    stts: SttsConfig = field(default_factory=SttsConfig)
    tokens: SpecialTokens = field(default_factory=SpecialTokens)
    attention_backend: Literal["auto", "sdpa_loop", "flash", "torch_varlen"] = "auto"
    """Packed attention kernel: auto = flash-attn on CUDA when installed, else torch varlen on
    CUDA, else one SDPA call per sequence on CPU."""
    init_std: float = 0.02
    init_scheme: Literal["normal", "fan_in"] = "normal"
    """Random init of linear layers: normal(0, init_std) as Molmo2/Qwen (fine-tuning from a
    checkpoint), or normal(0, 1/sqrt(fan_in)), which keeps signals alive through the connector's
    SwiGLU when a small model trains from scratch."""
    vocabulary: str = ""
    """'' = the full Qwen vocabulary; else a JSON file {"base_ids": [...]} restricting the Qwen
    tokenizer to those ids (small models; see `models.tokenizer.build_subset`)."""
    hf_checkpoint: str | None = None
    """Local Hugging Face Molmo2 directory to initialise from (None = random init). Its config.json
    (released or transformers layout) sets the architecture: vit, connector and llm shapes and the
    token ids; a shape the config also sets must agree (stts_train/config/hf_checkpoint.py)."""

    def __post_init__(self) -> None:
        check(
            self.vit.grid_size % self.connector.pool_size == 0,
            f"model.vit grid {self.vit.grid_size}x{self.vit.grid_size} (image_size/patch_size) is "
            f"not divisible by model.connector.pool_size={self.connector.pool_size}; pick "
            "image_size so the grid is a multiple",
        )
        check(
            self.stts.pruner in ("stts", "none"),
            f"model.stts.pruner={self.stts.pruner!r} must be 'stts' or 'none' (training-free "
            "pruners are chosen with `stts-train eval --pruner`)",
        )
        check(
            self.stts.pruner == "none" or self.stts.prune_at + 1 < self.vit.num_layers,
            f"model.stts.prune_at={self.stts.prune_at} needs block prune_at+1 < "
            f"model.vit.num_layers={self.vit.num_layers}; lower prune_at or use more layers",
        )
        for name, tid in vars(self.tokens).items():
            check(
                tid is None or 0 <= tid < self.llm.total_vocab_size,
                f"model.tokens.{name}={tid} is outside the vocabulary (size "
                f"{self.llm.total_vocab_size})",
            )

    @property
    def groups_per_frame(self) -> int:
        return (self.vit.grid_size // self.connector.pool_size) ** 2

    @property
    def patches_per_group(self) -> int:
        return self.connector.pool_size**2
