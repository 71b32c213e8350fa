"""Checkpoints: save/resume during training, consolidation, and Hugging Face interchange.

Reading order:
- `manager.py`: the on-disk layout and atomic commit of sharded engine checkpoints (local or
  s3://), resume, and `resolve_step_dir` for tools that are handed a run or checkpoint path;
- `consolidate.py`: a full tp=1 state dict from a live engine (collective) or from the shard
  files of a committed checkpoint (offline);
- `hf.py`: Hugging Face Molmo2 config and weight-name mapping, `load_hf` / `export_hf`;
- `export.py`: a committed checkpoint -> a Hugging Face Molmo2 directory.

Layering: below `parallel` and `train` (both use it), above `models`; nothing here imports
`stts_train.parallel`, `stts_train.train`, `stts_train.eval` or `stts_train.commands`.
"""
