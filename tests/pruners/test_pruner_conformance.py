"""Conformance over shared/golden/pruners, plus the generic compare helpers."""

from __future__ import annotations

import json

import pytest
import torch
from pruner_test_helpers import pruner_golden_dir

from stts_train.conformance.common import (
    CaseResult,
    check_rule,
    discover_cases,
    load_case,
    summarize,
)
from stts_train.conformance.pruners import run_case, run_pruner_goldens
from stts_train.errors import DataError
from stts_train.pruning.base import Grid, PrunerInput, get_pruner
from stts_train.pruning.training_free.holitom import (
    adjacent_similarity_TN,
    rescaled_ratio,
    static_windows,
)


def test_every_pruner_golden_case_passes():
    results = run_pruner_goldens(pruner_golden_dir())
    assert len(results) == 47, f"expected the 47 public cases, found {len(results)}"
    assert {r.component for r in results} == {
        "visionzip_video",
        "stop_visionzip",
        "fastvid_ov",
        "stop_fastvid",
        "holitom_outer",
        "stop_holitom",
        "holitom_inner",
    }
    failed = [str(r) for r in results if not r.passed]
    assert not failed, summarize(results) + "\n" + "\n".join(failed)
    for r in results:  # every listed output was really compared
        assert "expected_" in r.details and "max err" in r.details


def test_details_list_each_output_with_its_error():
    path = pruner_golden_dir() / "stop_fastvid" / "T16_r0.1_mus0.02_twins.json"
    res = run_case(path)
    assert res.passed, res.details
    for name in (
        "expected_features",
        "expected_frame",
        "expected_position",
        "expected_kind",
        "expected_sink_score",
        "expected_segment_sizes",
        "expected_context_budget",
    ):
        assert name in res.rules and res.rules[name].ok
        assert res.rules[name].max_abs_err <= 1e-5


@pytest.mark.parametrize(
    "variant, case",
    [
        ("fastvid_ov", "T16_r0.1_twins"),
        ("holitom_outer", "T16_r0.1_tau0.8_twins"),
        ("stop_holitom", "T16_r0.1_tau0.8_mus0.04_mut0.07_twins"),
    ],
)
def test_twins_need_the_saved_noise_and_a_seeded_generator_reproduces_it(variant, case):
    c = load_case(pruner_golden_dir() / variant / f"{case}.json")
    from stts_train.conformance.pruners import VARIANT_PRUNER, _build_params, _noise

    pruner = get_pruner(VARIANT_PRUNER[variant], **_build_params(c))
    g = c.meta["grid"]

    def run(**kw):
        v = PrunerInput(
            c.tensors["features"],
            c.tensors["attention"],
            Grid(g["rows"], g["cols"]),
            global_features_TG=c.tensors.get("global_features"),
            **kw,
        )
        return pruner(v)

    def matches(out):
        return (
            out.num_tokens == c.meta["expected_output_tokens"]
            and torch.equal(out.position_M, c.tensors["expected_position"])
            and torch.allclose(out.features_MD, c.tensors["expected_features"], 1e-5, 1e-5)
        )

    assert matches(run(noise=_noise(c)))
    seed = c.meta["rng"]["noise_seed"]
    assert matches(run(generator=torch.Generator().manual_seed(seed)))
    zeros = [torch.zeros_like(t) for t in _noise(c)]
    assert not matches(run(noise=zeros)), "twins should be decided by the noise"


def test_holitom_windows_and_rescaled_ratio_match_derived_values():
    for variant in ("holitom_outer", "stop_holitom"):
        for path in sorted((pruner_golden_dir() / variant).glob("*.json")):
            c = load_case(path)
            hp, grid = c.meta["hyperparameters"], c.meta["grid"]
            sim = adjacent_similarity_TN(c.tensors["features"])
            windows, reduced = static_windows(sim, hp["tau"], hp["max_window_size"])
            assert windows == [tuple(w) for w in c.tensors["expected_windows"].tolist()]
            assert reduced == c.meta["derived"]["static_tokens_removed_by_dp"]
            r = rescaled_ratio(hp["retain_ratio"], grid["T"], grid["n"], reduced)
            assert r == pytest.approx(c.meta["derived"]["rescaled_retain_ratio"], rel=1e-12)


def test_wrong_noise_is_a_clear_error(tmp_path):
    c = load_case(pruner_golden_dir() / "fastvid_ov" / "T08_r0.1.json")
    pruner = get_pruner("fastvid", **c.meta["hyperparameters"])
    v = PrunerInput(
        c.tensors["features"],
        c.tensors["attention"],
        Grid(14, 14),
        global_features_TG=c.tensors["global_features"],
        noise=[torch.zeros(3, 3)],
    )
    with pytest.raises(ValueError, match="noise tensor #0 has shape"):
        pruner(v)


def test_runner_reports_a_broken_case_as_failed(tmp_path):
    src = pruner_golden_dir() / "visionzip_video" / "T08_S20.json"
    d = tmp_path / "visionzip_video"
    d.mkdir()
    meta = json.loads(src.read_text())
    meta["hyperparameters"]["budget_per_frame"] = 21  # wrong budget -> wrong outputs
    (d / "T08_S20.json").write_text(json.dumps(meta))
    (d / "T08_S20.safetensors").write_bytes(src.with_suffix(".safetensors").read_bytes())
    res = run_pruner_goldens(tmp_path)
    assert len(res) == 1 and not res[0].passed and "FAIL" in res[0].details
    meta["variant"] = "no_such_method"
    (d / "T08_S20.json").write_text(json.dumps(meta))
    res = run_pruner_goldens(tmp_path)
    assert not res[0].passed and "unknown variant" in res[0].details
    assert summarize(res) == "0 passed, 1 failed"


def test_missing_golden_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        load_case(tmp_path / "nope.json")


# --- check_rule ---------------------------------------------------------------------------
def test_check_rule_exact_and_tolerance():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert check_rule("x", a, a.clone(), {"exact": True}).ok
    r = check_rule("x", a + 1e-3, a, {"exact": True})
    assert not r.ok and r.max_abs_err == pytest.approx(1e-3, rel=1e-3)
    assert check_rule("x", a + 1e-6, a, {"atol": 1e-5, "rtol": 0}).ok
    assert not check_rule("x", a + 1e-4, a, {"atol": 1e-5, "rtol": 0}).ok
    assert check_rule("x", a * (1 + 1e-6), a, {"atol": 0, "rtol": 1e-5}).ok
    assert not check_rule("x", a[:2], a, {"exact": True}).ok  # shape
    assert not check_rule("x", None, a, {"exact": True}).ok  # missing
    assert not check_rule("x", a, a, {"bogus": 1}).ok  # unknown rule
    assert not check_rule("x", a * float("nan"), a, {"atol": 1.0, "rtol": 0}).ok
    m = torch.tensor([True, False])
    assert check_rule("b", m, m.clone(), {"exact": True}).ok


def test_check_rule_mask_covers_leading_dims():
    exp = torch.zeros(2, 3, 4)
    act = exp.clone()
    act[1] += 5.0
    mask = torch.tensor([[True, True, True], [False, False, False]])
    tensors = {"m": mask}
    assert check_rule("h", act, exp, {"atol": 1e-4, "rtol": 0, "mask": "m"}, tensors).ok
    assert not check_rule("h", act, exp, {"atol": 1e-4, "rtol": 0}, tensors).ok
    assert not check_rule("h", act, exp, {"exact": True, "mask": "absent"}, tensors).ok


def test_case_result_str_and_summary():
    r = CaseResult("c", "k", True, "x: exact, max err 0")
    assert str(r).startswith("[PASS] c/k")
    assert summarize([r, CaseResult("c", "j", False, "boom")]) == "1 passed, 1 failed"
