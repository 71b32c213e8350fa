"""Evaluation of trained checkpoints: video QA accuracy, evidence recall, efficiency.

- `evaluator.py`: `Evaluator` scores one model under one pruning setting, sample by sample, and
  `load_trained_model` builds a model from a Hugging Face Molmo2 dir or an engine checkpoint;
- `run.py`: one pass over a dataset (`evaluate_samples`) and a whole evaluation of a checkpoint
  (`evaluate_checkpoint`, what `stts-train eval` runs).
"""
