"""`stts-train bench packing` entry points: arguments, JSON fields, machine block, PNG."""

from __future__ import annotations

import argparse
import json

from stts_train.bench import packing


def test_bench_writes_json_and_png(tmp_path):
    parser = argparse.ArgumentParser()
    packing.add_arguments(parser)
    out = tmp_path / "packing.json"
    args = parser.parse_args(
        [
            "--out",
            str(out),
            "--window",
            "96",
            "--windows",
            "3",
            "--dp",
            "2",
            "--keep",
            "0.5",
            "--live-window",
            "48",
            "--live-windows",
            "2",
        ]
    )
    assert packing.run(args) == 0
    doc = json.loads(out.read_text())
    assert {"platform", "cpu", "cores", "python", "torch"} <= set(doc["machine"])
    algos = {r["algorithm"] for r in doc["results"]}
    assert algos == {"balanced", "pad_to_longest", "ffd", "knapsack"}
    for r in doc["results"]:
        for key in (
            "padding_waste_llm",
            "padding_waste_vit",
            "imbalance_mean",
            "imbalance_p95",
            "carried_over",
            "planner_ms",
        ):
            assert key in r
    assert {r["mode"] for r in doc["live"]} == {"prefer_home_rank", "balance_first"}
    for r in doc["live"]:
        assert (
            r["carried_over"] == 0.0
            and 0.0 <= r["moved_vit_patches"] <= 1.0
            and r["imbalance_p95"] >= 0.0
        )
    assert out.with_suffix(".png").stat().st_size > 0


def test_trace_is_deterministic_and_in_range():
    a, b = packing.generate_trace(300, 5), packing.generate_trace(300, 5)
    assert a == b
    frames = [t for m in a for mod, t in zip(m.modalities, m.frames) if mod == 2]
    assert frames and min(frames) >= 8 and max(frames) <= 256
    assert {len(m.modalities) for m in a} == {0, 1}
