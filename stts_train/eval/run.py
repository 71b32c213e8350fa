"""One evaluation pass: a checkpoint, a dataset and a pruning setting -> a summary dict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stts_train.config.job import JobConfig
from stts_train.data.loader import eval_stream
from stts_train.errors import ConfigError
from stts_train.eval.evaluator import Evaluator, load_trained_model


def evaluate_samples(
    evaluator: Evaluator,
    job: JobConfig,
    data_path: str | None,
    *,
    frames: int | None = None,
    max_questions: int | None = None,
    progress: str | None = None,
) -> Iterator[Any]:
    """Feed one in-order pass over `data_path` to `evaluator`, yielding each sample once scored.

    At most `max_questions` samples; `progress` is the label of a tqdm bar (None: no bar). The
    stream is closed when the pass ends or the caller stops iterating.
    """
    stream = eval_stream(job, data_path, frames)
    try:
        samples = stream
        if progress is not None:
            from tqdm import tqdm

            samples = tqdm(stream, desc=progress, unit="q")
        for i, sample in enumerate(samples):
            if max_questions is not None and i >= max_questions:
                break
            evaluator.add(sample, qtype=str((sample.evidence or {}).get("qtype", "all")))
            yield sample
    finally:
        stream.close()


def evaluate_checkpoint(
    job: JobConfig,
    checkpoint: str,
    *,
    data_path: str | None = None,
    pruner: str = "stts",
    keep_ratio: float | None = None,
    frames: int | None = None,
    attention_layer: int = -1,
    max_questions: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy, evidence recall and efficiency of `checkpoint` (run dir, checkpoint dir or HF
    Molmo2 dir) on `data_path` (default data.eval_path, else data.path).

    `keep_ratio` defaults to model.stts.keep_ratio; `frames` (frames sampled per video) to
    data.max_frames; `pruner` is stts, none or a training-free pruner name.
    """
    from stts_train.models.tokenizer import load_tokenizer

    keep = job.model.stts.keep_ratio if keep_ratio is None else keep_ratio
    if not 0.0 < keep <= 1.0:
        raise ConfigError(
            f"keep ratio {keep} (--keep) must be in (0, 1]; use 1.0 (or --pruner none) for no "
            "pruning"
        )
    model = load_trained_model(checkpoint, job.model)
    data_path = data_path or job.data.eval_path or job.data.path
    evaluator = Evaluator(
        model,
        load_tokenizer(job.model),
        pruner=pruner,
        keep_ratio=keep,
        attention_layer=attention_layer,
    )
    label = f"eval {pruner}@{keep}" if progress else None
    for _ in evaluate_samples(
        evaluator, job, data_path, frames=frames, max_questions=max_questions, progress=label
    ):
        pass
    return {
        "pruner": pruner,
        "keep_ratio": keep,
        "frames": frames or job.data.max_frames,
        "data": data_path,
        **evaluator.result.summary(),
    }
