"""Conformance runner for the training-free pruner goldens (docs/pruners.md#golden-vectors).

    results = run_pruner_goldens("shared/golden/pruners")
    print(summarize(results))           # "N passed, M failed"

Every ``<variant>/<case>.json`` below the directory is run: the pruner for ``variant`` is built
from the case's ``hyperparameters`` with exactly the ``quirks`` it lists, fed the case inputs and
saved noise, and every output the case lists is compared:
    float outputs   atol/rtol from the case ``tolerance`` (1e-5/1e-5 if an output has none);
    integer outputs exact;
    the row count must equal ``expected_output_tokens``;
    every kind-0 row must be a bit-exact copy of ``features[frame, position]``.
A ``compare`` field in the JSON, if present, is applied on top (generic rule format, common.py).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stts_train.conformance.common import (
    Case,
    CaseResult,
    RuleResult,
    check_rule,
    discover_cases,
    load_case,
)
from stts_train.pruning.base import KIND_COPY, Grid, PrunerInput, get_pruner
from stts_train.pruning.training_free.holitom import holitom_inner_merge

# golden variant directory -> registry name
VARIANT_PRUNER = {
    "visionzip_video": "visionzip",
    "stop_visionzip": "stop_visionzip",
    "fastvid_ov": "fastvid",
    "stop_fastvid": "stop_fastvid",
    "holitom_outer": "holitom",
    "stop_holitom": "stop_holitom",
}
INNER_VARIANT = "holitom_inner"

# golden quirk name -> constructor flag
QUIRK_FLAGS = {
    "stop_visionzip_sink_target_shift": "sink_target_shift",
    "stop_fastvid_density_sink_penalty": "density_sink_penalty_active",
    "stop_fastvid_double_penalty_multiframe": "double_penalty_multiframe",
    "stop_holitom_sttp_fixed_threshold": "sttp_fixed_threshold",
    "stop_holitom_centre_sink_penalty": "centre_sink_penalty_active",
}

# expected output name -> (PrunerOutput attribute | "diag:<key>")
OUTPUT_SOURCES = {
    "expected_features": "features_MD",
    "expected_frame": "frame_M",
    "expected_position": "position_M",
    "expected_kind": "kind_M",
    "expected_sink_score": "diag:sink_score_N",
    "expected_windows": "diag:windows_W2",
    "expected_segment_sizes": "diag:segment_sizes_S",
    "expected_context_budget": "diag:context_budget_T",
}
DEFAULT_FLOAT_RULE = {"atol": 1e-5, "rtol": 1e-5}


def _rules_for(case: Case) -> dict[str, dict[str, Any]]:
    """Compare rule per expected output, from ``outputs`` + ``tolerance`` (+ explicit compare)."""
    tolerance = case.meta.get("tolerance") or {}
    rules: dict[str, dict[str, Any]] = {}
    for out in case.meta.get("outputs") or []:
        name = out["name"]
        tol = tolerance.get(name)
        if isinstance(tol, dict):
            rules[name] = {"atol": tol.get("atol", 0.0), "rtol": tol.get("rtol", 0.0)}
        elif str(out.get("dtype", "")).startswith(("int", "bool", "uint")):
            rules[name] = {"exact": True}
        else:
            rules[name] = dict(DEFAULT_FLOAT_RULE)
    rules.update(case.compare)
    return rules


def _noise(case: Case) -> list[Tensor]:
    rng = case.meta.get("rng")
    specs = rng.get("noise_tensors", []) if isinstance(rng, dict) else []
    return [case.tensor(spec["name"]) for spec in specs]


def _build_params(case: Case) -> dict[str, Any]:
    params = dict(case.meta.get("hyperparameters") or {})
    for quirk, active in (case.meta.get("quirks") or {}).items():
        if quirk not in QUIRK_FLAGS:
            if active:
                raise ValueError(f"quirk '{quirk}' is active but not supported by this runner")
            continue
        params[QUIRK_FLAGS[quirk]] = bool(active)
    return params


def _run_video_case(case: Case, variant: str) -> tuple[dict[str, Tensor | None], list[RuleResult]]:
    grid = case.meta["grid"]
    pruner = get_pruner(VARIANT_PRUNER[variant], **_build_params(case))
    t = case.tensors
    video = PrunerInput(
        features_TND=case.tensor("features"),
        attention_TN=t.get("attention"),
        grid=Grid(int(grid["rows"]), int(grid["cols"])),
        keys_TNK=t.get("keys"),
        global_features_TG=t.get("global_features"),
        noise=_noise(case),
    )
    out = pruner(video)
    produced: dict[str, Tensor | None] = {}
    for name, src in OUTPUT_SOURCES.items():
        if src.startswith("diag:"):
            produced[name] = out.diagnostics.get(src[5:])
        else:
            produced[name] = getattr(out, src)
    extra: list[RuleResult] = []
    expected_rows = case.meta.get("expected_output_tokens")
    if expected_rows is not None:
        ok = out.num_tokens == int(expected_rows)
        extra.append(
            RuleResult(
                ok,
                0.0 if ok else float("inf"),
                f"rows: {out.num_tokens} (expected {expected_rows})",
            )
        )
    copies = out.kind_M == KIND_COPY
    src = video.features_TND[out.frame_M[copies], out.position_M[copies]]
    ok = bool(torch.equal(out.features_MD[copies], src))
    extra.append(
        RuleResult(
            ok,
            0.0 if ok else float("inf"),
            f"kind-0 rows bit-equal to their source ({int(copies.sum())} rows)",
        )
    )
    return produced, extra


def _run_inner_case(case: Case) -> tuple[dict[str, Tensor | None], list[RuleResult]]:
    hp = case.meta.get("hyperparameters") or {}
    seq = case.meta.get("sequence") or {}
    hidden, position_ids = holitom_inner_merge(
        case.tensor("hidden"),
        case.tensor("attention_last_query"),
        visual_start=int(hp.get("visual_start", seq.get("visual_start"))),
        visual_len=int(hp.get("visual_len", seq.get("visual_len"))),
        merge_ratio=float(hp["merge_ratio"]),
    )
    extra: list[RuleResult] = []
    expected_rows = case.meta.get("expected_output_tokens")
    if expected_rows is not None:
        ok = hidden.shape[0] == int(expected_rows)
        extra.append(
            RuleResult(
                ok,
                0.0 if ok else float("inf"),
                f"rows: {hidden.shape[0]} (expected {expected_rows})",
            )
        )
    return {"expected_hidden": hidden, "expected_position_ids": position_ids}, extra


def run_case(json_path: str | Path) -> CaseResult:
    """Run and check one pruner golden case; never raises (errors become a failed result)."""
    json_path = Path(json_path)
    component, case_name = json_path.parent.name, json_path.stem
    try:
        case = load_case(json_path)
        component = str(case.meta.get("variant", component))
        case_name = case.name
        if component == INNER_VARIANT:
            produced, extra = _run_inner_case(case)
        elif component in VARIANT_PRUNER:
            produced, extra = _run_video_case(case, component)
        else:
            return CaseResult(
                component,
                case_name,
                False,
                f"unknown variant '{component}' (known: "
                f"{', '.join([*VARIANT_PRUNER, INNER_VARIANT])})",
            )
        rules = _rules_for(case)
        results: dict[str, RuleResult] = {}
        for name, rule in rules.items():
            if name not in case.tensors:
                results[name] = RuleResult(
                    False, float("inf"), f"{name}: expected tensor missing from the case file"
                )
                continue
            if name not in produced:
                results[name] = RuleResult(
                    False, float("inf"), f"{name}: this runner does not know this output"
                )
                continue
            results[name] = check_rule(name, produced[name], case.tensors[name], rule, case.tensors)
        for i, res in enumerate(extra):
            results[f"_check{i}"] = res
        passed = all(r.ok for r in results.values()) and bool(rules)
        details = "; ".join(("" if r.ok else "FAIL ") + r.message for r in results.values())
        return CaseResult(component, case_name, passed, details or "no compare rules", results)
    except Exception as exc:  # noqa: BLE001 - a crash on one case must not hide the others
        tb = traceback.format_exc(limit=3)
        return CaseResult(component, case_name, False, f"error: {exc!r}\n{tb}")


def run_pruner_goldens(golden_dir: str | Path) -> list[CaseResult]:
    """Run every case under ``golden_dir/<variant>/<case>.json``; one CaseResult per case."""
    return [run_case(p) for p in discover_cases(golden_dir)]
