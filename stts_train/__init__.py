"""stts-train: efficient video VLM training with STTS token pruning."""

__version__ = "0.1.0"
