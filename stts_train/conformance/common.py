"""Generic helpers for golden-vector conformance runs (pruner goldens, STTS goldens, ...).

A case is a pair ``<dir>/<case>.json`` + ``<dir>/<case>.safetensors`` (no pickle).

    case = load_case("golden/stts/selection/one_video_t5_r05.json")
    case.meta        # the parsed JSON, untouched
    case.tensors     # every tensor of the safetensors file, by name
    case.compare     # output name -> rule (the JSON ``compare`` field, {} if absent)

A compare rule is a dict:
    {"exact": true}                     elementwise equality (shape and values)
    {"atol": a, "rtol": r}              |actual - expected| <= a + r * |expected| elementwise
                                        (numpy/torch ``allclose`` semantics), no NaN allowed
    either, plus "mask": "<bool tensor name in case.tensors>"
                                        compare only where the mask is True; the mask covers the
                                        leading dimensions and broadcasts over the rest

``check_rule(name, actual, expected, rule, tensors)`` applies one rule and returns
``RuleResult(ok, max_abs_err, message)``; ``CaseResult`` is the per-case summary both runners
return.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stts_train.errors import DataError


@dataclass
class Case:
    """One golden case: its JSON (``meta``) and its tensors."""

    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    json_path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.meta.get("case") or (self.json_path.stem if self.json_path else "?"))

    @property
    def compare(self) -> dict[str, dict[str, Any]]:
        return dict(self.meta.get("compare") or {})

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise DataError(
                f"golden case {self.json_path}: tensor '{name}' is missing from the safetensors "
                f"file (has: {', '.join(sorted(self.tensors))}); the case files are incomplete"
            )
        return self.tensors[name]


@dataclass
class RuleResult:
    ok: bool
    max_abs_err: float
    message: str


@dataclass
class CaseResult:
    """Outcome of one case. ``details`` lists every compared output with its max error."""

    component: str
    case: str
    passed: bool
    details: str
    rules: dict[str, RuleResult] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.component}/{self.case}: {self.details}"


def load_case(json_path: str | Path) -> Case:
    """Read ``<case>.json`` and the ``<case>.safetensors`` beside it."""
    from safetensors.torch import load_file

    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataError(f"golden case JSON {json_path} does not exist; check the golden directory")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"golden case {json_path} is not valid JSON: {exc}") from exc
    st_path = json_path.with_suffix(".safetensors")
    if not st_path.is_file():
        raise DataError(
            f"golden case {json_path} has no tensor file {st_path.name} beside it; copy both files"
        )
    return Case(meta=meta, tensors=load_file(str(st_path)), json_path=json_path)


def discover_cases(golden_dir: str | Path) -> list[Path]:
    """Every ``*.json`` one folder below ``golden_dir`` (``<component>/<case>.json``), sorted."""
    golden_dir = Path(golden_dir)
    if not golden_dir.is_dir():
        raise DataError(
            f"golden directory {golden_dir} does not exist; point it at the shared golden folder"
        )
    return sorted(p for p in golden_dir.glob("*/*.json") if p.is_file())


def _max_abs_err(actual: Tensor, expected: Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        return float((actual.to(torch.int64) != expected.to(torch.int64)).sum().item())
    diff = (actual.to(torch.float64) - expected.to(torch.float64)).abs()
    err = diff.max().item()
    return float("inf") if math.isnan(err) else float(err)


def check_rule(
    name: str,
    actual: Tensor | None,
    expected: Tensor,
    rule: dict[str, Any],
    tensors: dict[str, Tensor] | None = None,
) -> RuleResult:
    """Apply one compare rule to an output. ``tensors`` resolves a rule's ``mask`` name."""
    if actual is None:
        return RuleResult(False, float("inf"), f"{name}: not produced by the implementation")
    actual = actual.detach().cpu()
    expected = expected.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        return RuleResult(
            False,
            float("inf"),
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}",
        )
    mask_name = rule.get("mask")
    if mask_name is not None:
        if tensors is None or mask_name not in tensors:
            return RuleResult(False, float("inf"), f"{name}: mask tensor '{mask_name}' not found")
        mask = tensors[mask_name].to(torch.bool).cpu()
        if tuple(mask.shape) != tuple(expected.shape[: mask.dim()]):
            return RuleResult(
                False,
                float("inf"),
                f"{name}: mask '{mask_name}' shape {tuple(mask.shape)} does not cover the leading "
                f"dimensions of {tuple(expected.shape)}",
            )
        actual, expected = actual[mask], expected[mask]
    where = f" on mask {mask_name}" if mask_name else ""
    if rule.get("exact"):
        ok = (
            bool(torch.equal(actual, expected.to(actual.dtype)))
            if actual.dtype == expected.dtype
            else bool(torch.equal(actual.to(torch.float64), expected.to(torch.float64)))
        )
        err = _max_abs_err(actual, expected)
        return RuleResult(ok, err, f"{name}: exact{where}, max err {err:.3g}")
    if "atol" in rule or "rtol" in rule:
        atol = float(rule.get("atol", 0.0))
        rtol = float(rule.get("rtol", 0.0))
        a = actual.to(torch.float64)
        e = expected.to(torch.float64)
        ok = bool(torch.allclose(a, e, rtol=rtol, atol=atol)) if a.numel() else True
        err = _max_abs_err(a, e)
        return RuleResult(ok, err, f"{name}: atol={atol:g} rtol={rtol:g}{where}, max err {err:.3g}")
    return RuleResult(False, float("inf"), f"{name}: unknown compare rule {rule!r}")


def summarize(results: list[CaseResult]) -> str:
    """'N passed, M failed' over a list of case results."""
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"
