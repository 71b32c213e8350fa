"""Engine checkpoint -> Hugging Face Molmo2 directory (what `stts-train export` runs).

The checkpoint may be a committed step dir, a checkpoint root or a run dir, local or s3://
(`manager.resolve_step_dir`). Its ZeRO (+TP) shards are consolidated into a full state dict in
our parameter names (`consolidate.consolidate`), the model config is read from the checkpoint's
own config.yaml, and `hf.export_hf` writes config.json + safetensors in Molmo2's naming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from stts_train.checkpoint.consolidate import consolidate_path
from stts_train.checkpoint.hf import export_hf
from stts_train.config import config_from_dict


@dataclass(frozen=True)
class ExportResult:
    step: int
    num_tensors: int
    out_dir: Path


def export_checkpoint(checkpoint: str, out_dir: str | Path) -> ExportResult:
    """Write the Hugging Face Molmo2 directory of `checkpoint` to `out_dir`."""
    state, meta, config_yaml = consolidate_path(checkpoint)
    cfg = config_from_dict(yaml.safe_load(config_yaml), source=f"{checkpoint} (config.yaml)")
    out = export_hf(state, cfg.model, out_dir)
    return ExportResult(step=int(meta["step"]), num_tensors=len(state), out_dir=out)
