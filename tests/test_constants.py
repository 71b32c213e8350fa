"""The shared vocabulary: one module, importing only the stdlib, that the data shards agree with."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines import schema
from stts_train.constants import IGNORE_INDEX, Modality

REPO = Path(__file__).resolve().parents[1]


def test_constants_module_imports_only_the_stdlib():
    tree = ast.parse((REPO / "stts_train" / "constants.py").read_text())
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert all(m.split(".")[0] in sys.stdlib_module_names | {"__future__"} for m in mods), mods


def test_shard_schema_uses_the_same_modality_codes():
    assert (schema.MODALITY_IMAGE, schema.MODALITY_VIDEO) == (Modality.IMAGE, Modality.VIDEO)


def test_ignore_index_is_what_cross_entropy_ignores():
    assert IGNORE_INDEX == inspect.signature(F.cross_entropy).parameters["ignore_index"].default
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, IGNORE_INDEX, 2])
    every = F.cross_entropy(logits, labels, reduction="sum")
    assert torch.allclose(every, F.cross_entropy(logits[[0, 2]], labels[[0, 2]], reduction="sum"))
