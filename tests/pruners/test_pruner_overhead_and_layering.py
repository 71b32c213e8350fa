"""Smoke test of the overhead benchmark function and the pruning layer's import rules."""

from __future__ import annotations

import ast
from pathlib import Path

from stts_train.bench.pruner_overhead import measure_pruner_overhead
from stts_train.pruning.base import available_pruners

PRUNING = Path(__file__).resolve().parents[2] / "stts_train" / "pruning"
FORBIDDEN = ("torch.distributed", "deepspeed", "megatron", "ray", "stts_train.parallel")


def test_measure_pruner_overhead_reports_every_training_free_pruner():
    res = measure_pruner_overhead(num_frames=8, n=81, dim=32, repeats=1, warmup=0)
    assert set(res) == set(available_pruners()) - {"stts"}
    assert all(v > 0 for v in res.values())


def test_pruners_do_not_import_distributed_code():
    files = [PRUNING / "base.py", *sorted((PRUNING / "training_free").glob("*.py"))]
    assert len(files) >= 8
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == b or name.startswith(b + ".") for b in FORBIDDEN), (f, name)
