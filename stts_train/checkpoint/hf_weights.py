"""Molmo2 safetensors weights (one file, or shards with an index) -> our state dict.

Reads what `save_pretrained` writes: `model.safetensors`, or the shards that
`model.safetensors.index.json` lists. bf16/fp16 tensors are cast to fp32 and the dtypes found are
logged. Every tensor name is checked against Molmo2's disk format before the renaming in
`stts_train/checkpoint/hf.py::from_hf_state_dict`, and the renamed tensors are checked, name
and shape, against the model the config describes, so weights that disagree with their
config.json fail naming the tensor, never inside `load_state_dict`. An STTS scorer stored in the
main weights under the reference names (with or without a `model.` prefix) is loaded with them.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from stts_train.config.model import ModelConfig
from stts_train.errors import CheckpointError

log = logging.getLogger(__name__)
Rename = Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SCORER_PREFIXES = (
    "model.vision_backbone.image_vit.transformer.temporal_token_scorer.",
    "vision_backbone.image_vit.transformer.temporal_token_scorer.",
)
_CASTABLE = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# The Molmo2 disk format (what transformers 5.23 writes and the released checkpoints hold).
_VIT = r"model\.vision_backbone\.image_vit\."
_KNOWN = re.compile(
    "|".join(
        [
            _VIT + r"(patch_embedding\.(weight|bias)|positional_embedding)",
            _VIT + r"transformer\.resblocks\.\d+\."
            r"(attention\.w[qkvo]|attention_norm|ffn_norm|feed_forward\.w[12])\.(weight|bias)",
            r"model\.vision_backbone\.image_pooling_2d\.w[qkvo]\.(weight|bias)",
            r"model\.vision_backbone\.image_projector\.w[123]\.weight",
            r"model\.transformer\.(wte\.embedding|wte\.new_embedding|ln_f\.weight)",
            r"model\.transformer\.blocks\.\d+\.(self_attn\.(att_proj|attn_out|q_norm|k_norm)"
            + r"|attn_norm|ff_norm|mlp\.(ff_proj|ff_out))\.weight",
            r"lm_head\.weight",
        ]
    )
)
_LLM_BIAS = re.compile(
    r"model\.transformer\.blocks\.\d+\.(self_attn\.(att_proj|attn_out)"
    r"|mlp\.(ff_proj|ff_out))\.bias"
)
_VIT_LAYER = re.compile(_VIT + r"transformer\.resblocks\.(\d+)\.")


def _listing(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint directory, and the index's tensor -> file map."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index} is not a safetensors index (no weight_map): {e}"
            ) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard files")
        names = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).is_file():
        weight_map, names = None, [SINGLE_FILE]
    else:
        raise CheckpointError(
            f"{path} holds no {SINGLE_FILE} or {INDEX_FILE}; pass a Hugging Face Molmo2 directory "
            "(save_pretrained output)"
        )
    files = []
    for name in names:
        file = (path / str(name)).resolve()
        if path.resolve() not in file.parents:
            raise CheckpointError(f"{index}: shard {name!r} points outside {path}")
        if not file.is_file():
            raise CheckpointError(f"{index} lists shard {name!r}, which is missing from {path}")
        files.append(file)
    return files, weight_map


def read_safetensors(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, cast to `dtype` (the dtypes found are logged)."""
    from safetensors import safe_open

    path = Path(path)
    files, weight_map = weight_files(path)
    state: dict[str, torch.Tensor] = {}
    found: Counter[str] = Counter()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name in state:
                    raise CheckpointError(f"tensor {name} appears in two shards of {path}")
                tensor = f.get_tensor(name)
                if tensor.dtype not in _CASTABLE:
                    raise CheckpointError(
                        f"{file.name}: tensor {name} is {tensor.dtype}; quantized checkpoints are "
                        "not supported, use one saved in bf16, fp16 or fp32"
                    )
                found[str(tensor.dtype).removeprefix("torch.")] += 1
                state[name] = tensor.to(dtype)
    if weight_map is not None:
        absent = sorted(k for k in weight_map if k not in state)
        if absent:
            raise CheckpointError(
                f"{path / INDEX_FILE} lists tensors its shards lack: {_listing(absent)}"
            )
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(found.items()))
    log.info(
        "read %d tensors from %s (%d file%s: %s), cast to %s",
        len(state),
        path,
        len(files),
        "s" if len(files) > 1 else "",
        dtypes,
        str(dtype).removeprefix("torch."),
    )
    return state


def split_disk_state(disk: dict[str, torch.Tensor], cfg: ModelConfig):
    """(Molmo2 tensors to rename, scorer tensors in our names), after checking every name."""
    keep: dict[str, torch.Tensor] = {}
    scorer: dict[str, torch.Tensor] = {}
    unknown, biases, deeper = [], [], []
    for name, tensor in disk.items():
        prefix = next((p for p in SCORER_PREFIXES if name.startswith(p)), None)
        layer = _VIT_LAYER.match(name)
        if prefix is not None:
            scorer["vision.scorer." + name[len(prefix) :]] = tensor
        elif _LLM_BIAS.fullmatch(name):
            biases.append(name)
        elif not _KNOWN.fullmatch(name):
            unknown.append(name)
        elif layer and int(layer.group(1)) >= cfg.vit.num_layers:
            deeper.append(
                name
            )  # past the deepest feature layer: transformers does not build it either
        else:
            keep[name] = tensor
    if biases:
        raise CheckpointError(
            f"the checkpoint has LLM projection biases ({_listing(biases)}); the Qwen3 LLM has no "
            "q/k/v, output or MLP biases, so these cannot be loaded (a checkpoint with them needs "
            "text_config.attention_bias/qkv_bias support, which stts-train lacks)"
        )
    if unknown:
        raise CheckpointError(
            f"tensors that are not part of a Molmo2 checkpoint: {_listing(sorted(unknown))}; "
            "remove them or use a checkpoint saved by transformers' Molmo2ForConditionalGeneration"
        )
    if deeper:
        log.info(
            "skipped %d tensors of ViT layers >= %d (deeper than every feature layer)",
            len(deeper),
            cfg.vit.num_layers,
        )
    return keep, scorer


def check_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Names and shapes of a state dict against the model `cfg` builds (the scorer is optional)."""
    expected = model_shapes(cfg)
    missing = [k for k in expected if k not in state and not k.startswith("vision.scorer.")]
    extra = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} (config.json implies {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or extra or shapes:
        problems = [
            f"{what}: {_listing(names)}"
            for what, names in (
                ("missing", missing),
                ("not in the model", extra),
                ("wrong shape", shapes),
            )
            if names
        ]
        raise CheckpointError(f"the weights do not match their config.json: {'; '.join(problems)}")


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the model `cfg` builds (on the meta device: no memory)."""
    from stts_train.models.vlm import Molmo2VLM

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Molmo2VLM(cfg).state_dict().items()}


def read_state(path: str | Path, cfg: ModelConfig, rename: Rename) -> dict[str, torch.Tensor]:
    """Our fp32 state dict (scorer included when the weights carry one and the model has one)
    from a Molmo2 directory whose config.json gave `cfg`; `rename` maps Molmo2 disk names to ours
    (`from_hf_state_dict` of the HF interop module, which calls this)."""
    keep, scorer = split_disk_state(read_safetensors(path), cfg)
    state = rename(keep, cfg)
    if scorer and not any(k.startswith("vision.scorer.") for k in model_shapes(cfg)):
        log.info(
            "the checkpoint's STTS scorer is not loaded: model.stts.pruner=%s has none",
            cfg.stts.pruner,
        )
        scorer = {}
    state.update(scorer)
    check_state(state, cfg)
    return state
