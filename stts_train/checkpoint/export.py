"""Engine checkpoint -> Hugging Face Molmo2 directory (what `stts-train export` runs).

The checkpoint may be a committed step dir, a checkpoint root or a run dir, local or s3://
(`manager.resolve_step_dir`). Its ZeRO (+TP) shards are consolidated into a full state dict in
our parameter names (`consolidate.consolidate`), the model config is read from the checkpoint's
own config.yaml, and `hf.export_hf` writes a servable Molmo2 directory: config.json, bf16 (or
fp32) safetensors shards in Molmo2's naming with the scorer inside, tokenizer, chat template,
processor and generation configs, and a README.md on which runtimes prune.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from stts_train.checkpoint.consolidate import consolidate_path
from stts_train.checkpoint.hf import MAX_SHARD_BYTES, export_hf
from stts_train.config import config_from_dict
from stts_train.errors import CheckpointError


@dataclass(frozen=True)
class ExportResult:
    step: int
    num_tensors: int
    out_dir: Path


def export_checkpoint(
    checkpoint: str,
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = False,
) -> ExportResult:
    """Write the Hugging Face Molmo2 directory of `checkpoint` to `out_dir`."""
    state, meta, config_yaml = consolidate_path(checkpoint)
    cfg = config_from_dict(yaml.safe_load(config_yaml), source=f"{checkpoint} (config.yaml)")
    out = export_hf(
        state,
        cfg.model,
        out_dir,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
        data=cfg.data,
        progress=progress,
    )
    return ExportResult(step=int(meta["step"]), num_tensors=len(state), out_dir=out)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS["GIB"] = 2**30


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000000' -> bytes (decimal units, as save_pretrained)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise CheckpointError(
            f"--max-shard-size={text!r} is not a size; write e.g. 5GB, 500MB or 2GiB"
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
