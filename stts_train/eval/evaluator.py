"""Video QA evaluation: accuracy, evidence recall of kept tokens, efficiency.

Accuracy: for multiple-choice questions every choice is scored by the summed log-likelihood of
its answer tokens (teacher forcing) and the best one is the prediction; open questions are
greedy-decoded (a few tokens) and matched exactly. Evidence recall: when an annotation carries
`evidence.boxes` ([source frame, x0, y0, x1, y1] in pixels), the 3x3 groups of the sampled
frames that overlap a box by at least a quarter of their area are the evidence; recall is the
fraction of them that the pruner kept. Efficiency: visual tokens kept and prefill time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX
from stts_train.data.batch import MicroBatch
from stts_train.data.collate import TokenizedSample
from stts_train.data.template import tokenize_sample
from stts_train.models.vlm import Molmo2VLM, VLMOutput

EVIDENCE_OVERLAP = 0.25


@dataclass
class EvalResult:
    num_questions: int = 0
    correct: int = 0
    per_type: dict[str, list[int]] = field(default_factory=dict)
    evidence_kept: int = 0
    evidence_total: int = 0
    visual_in: int = 0
    visual_kept: int = 0
    prefill_seconds: float = 0.0
    kept_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per sample key: (F, G) kept-position mask (for overlays in reports)."""

    def summary(self) -> dict:
        return {
            "questions": self.num_questions,
            "accuracy": self.correct / max(self.num_questions, 1),
            "accuracy_per_type": {k: c / max(n, 1) for k, (c, n) in self.per_type.items()},
            "evidence_recall": self.evidence_kept / self.evidence_total
            if self.evidence_total
            else None,
            "visual_tokens_kept_ratio": self.visual_kept / max(self.visual_in, 1),
            "visual_tokens_per_question": self.visual_kept / max(self.num_questions, 1),
            "prefill_ms_per_question": 1000 * self.prefill_seconds / max(self.num_questions, 1),
        }


def single_batch(sample: TokenizedSample) -> MicroBatch:
    n = sample.input_ids.numel()
    return MicroBatch(
        input_ids_S=sample.input_ids,
        labels_S=sample.labels,
        cu_seqlens_B1=torch.tensor([0, n], dtype=torch.int32),
        pixels_FNC=torch.cat(sample.pixels_FNC) if sample.pixels_FNC else torch.zeros(0),
        item_frames_I=torch.tensor(sample.item_frames, dtype=torch.long),
        item_modality_I=torch.tensor(sample.item_modality, dtype=torch.long),
        item_sample_I=torch.zeros(len(sample.item_frames), dtype=torch.long),
        sample_keys=[sample.key],
    )


def evidence_groups(
    cfg: ModelConfig, evidence: dict | None, frame_indices: list[int], frame_size: tuple[int, int]
):
    """(F, G) bool: groups of the sampled frames covered by the evidence boxes (None if none)."""
    if not evidence or not evidence.get("boxes"):
        return None
    side = cfg.vit.grid_size // cfg.connector.pool_size
    height, width = frame_size
    cell_h, cell_w = height / side, width / side
    boxes: dict[int, list[list[float]]] = {}
    for t, x0, y0, x1, y1 in evidence["boxes"]:
        boxes.setdefault(int(t), []).append([x0, y0, x1, y1])
    mask = torch.zeros(len(frame_indices), side * side, dtype=torch.bool)
    for f, src in enumerate(frame_indices):
        for x0, y0, x1, y1 in boxes.get(src, []):
            for g in range(side * side):
                gy0, gx0 = (g // side) * cell_h, (g % side) * cell_w
                ow = max(0.0, min(x1, gx0 + cell_w) - max(x0, gx0))
                oh = max(0.0, min(y1, gy0 + cell_h) - max(y0, gy0))
                if ow * oh >= EVIDENCE_OVERLAP * cell_w * cell_h:
                    mask[f, g] = True
    return mask


def source_frame_indices(sample) -> list[int]:
    """Source-video frame index of every sampled frame (from its timestamp and the fps)."""
    fps = float(sample.metadata.get("fps") or 0) or 1.0
    return [int(round(t * fps)) for t in sample.frame_times_s]


class Evaluator:
    """Runs one model under one pruning setting over decoded samples."""

    def __init__(
        self,
        model: Molmo2VLM,
        tokenizer,
        *,
        pruner: str = "stts",
        keep_ratio: float = 1.0,
        attention_layer: int = -1,
        pruner_params: dict | None = None,
    ) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.keep_ratio = keep_ratio
        self.pruner_name = pruner
        self.attention_layer = attention_layer
        self.pruner = None
        if pruner not in ("stts", "none"):
            from stts_train.models.pruned_inference import build_pruner

            self.pruner = build_pruner(pruner, self.cfg.groups_per_frame, **(pruner_params or {}))
        self.result = EvalResult()

    def _forward(self, sample: TokenizedSample) -> VLMOutput:
        batch = single_batch(sample)
        with torch.no_grad():
            if self.pruner is not None:
                from stts_train.models.pruned_inference import forward_with_pruner

                return forward_with_pruner(
                    self.model,
                    batch,
                    self.pruner,
                    keep_ratio=self.keep_ratio,
                    attention_layer=self.attention_layer,
                    return_logits=False,
                )
            keep = 1.0 if self.pruner_name == "none" else self.keep_ratio
            return self.model(batch, keep_ratio=keep)

    def add(self, sample, qtype: str = "all") -> bool:
        """Evaluate one decoded sample (DecodedSample-like); returns whether it was correct."""
        choices = sample.choices or []
        start = time.perf_counter()
        if choices:
            scores = []
            first = None
            for choice in choices:
                variant = _with_answer(sample, choice)
                out = self._forward(tokenize_sample(variant, self.tokenizer, self.cfg))
                first = first or out
                scores.append(float(out.ce_sum))
            prediction = choices[min(range(len(choices)), key=scores.__getitem__)]
            out = first
        else:
            prediction, out = self._greedy(sample)
        self.result.prefill_seconds += (time.perf_counter() - start) / max(len(choices), 1)
        correct = prediction.strip().lower() == sample.answer.strip().lower()
        r = self.result
        r.num_questions += 1
        r.correct += int(correct)
        c, n = r.per_type.get(qtype, [0, 0])
        r.per_type[qtype] = [c + int(correct), n + 1]
        r.visual_in += int(out.stats.get("image_tokens_in", 0))
        r.visual_kept += int(out.stats.get("image_tokens_kept", 0))
        kept = out.kept_mask_FG if out.kept_mask_FG is not None else out.keep_group_FG
        if kept is not None:
            r.kept_masks[sample.key] = kept.cpu()
            evidence = evidence_groups(
                self.cfg, sample.evidence, source_frame_indices(sample), _frame_size(sample)
            )
            if evidence is not None and evidence.shape == kept.shape:
                r.evidence_total += int(evidence.sum())
                r.evidence_kept += int((evidence & kept.cpu()).sum())
        return correct

    def _greedy(self, sample, max_tokens: int = 8) -> tuple[str, VLMOutput]:
        im_end = self.tokenizer.token_to_id("<|im_end|>")
        generated: list[int] = []
        first = None
        for _ in range(max_tokens):
            ts = tokenize_sample(sample, self.tokenizer, self.cfg, with_answer=False)
            ids = torch.cat([ts.input_ids, torch.tensor(generated, dtype=torch.long)])
            ts.input_ids, ts.labels = ids, torch.full_like(ids, IGNORE_INDEX)
            batch = single_batch(ts)
            with torch.no_grad():
                out = self.model(batch, return_logits=True, keep_ratio=self.keep_ratio)
            first = first or out
            token = int(out.logits[-1].argmax())
            if token == im_end:
                break
            generated.append(token)
        return self.tokenizer.decode(generated), first


def _with_answer(sample, answer: str):
    import copy

    variant = copy.copy(sample)
    variant.answer = answer
    return variant


def _frame_size(sample) -> tuple[int, int]:
    meta = sample.metadata or {}
    return int(meta.get("height") or 0) or 1, int(meta.get("width") or 0) or 1


def load_trained_model(checkpoint: str, model_cfg: ModelConfig) -> Molmo2VLM:
    """A model with trained weights from a Hugging Face Molmo2 dir or an engine checkpoint."""
    from pathlib import Path

    from stts_train.checkpoint.consolidate import consolidate_path
    from stts_train.checkpoint.hf import load_hf, load_into

    path = Path(checkpoint)
    if (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        or (path / "model.safetensors.index.json").is_file()
    ):
        cfg, state = load_hf(path, model_cfg)
    else:
        state = consolidate_path(checkpoint)[0]
        cfg = model_cfg
    model = Molmo2VLM(cfg)
    load_into(model, state)
    return model.eval()
