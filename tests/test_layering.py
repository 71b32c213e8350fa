"""Import rules: model code never imports distributed code; layers do not reach across."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RULES = {
    "stts_train/models": ("torch.distributed", "deepspeed", "megatron", "ray", "stts_train.parallel", "stts_train.train"),
    "stts_train/pruning": ("torch.distributed", "deepspeed", "megatron", "ray", "stts_train.parallel", "stts_train.train"),
    "pipelines": ("deepspeed", "megatron", "torch.distributed", "stts_train.train", "stts_train.parallel", "stts_train.models"),
    "cluster": ("stts_train.models", "stts_train.pruning", "deepspeed", "megatron"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(RULES))
def test_forbidden_imports(folder):
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in RULES[folder]):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def test_command_modules_import_only_stdlib_at_top_level():
    import sys

    allowed_prefixes = ("stts_train.errors",)
    for path in sorted((REPO / "stts_train" / "commands").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            for mod in mods:
                top = mod.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "__future__" or mod.startswith(allowed_prefixes)
                assert ok, f"{path.name} imports {mod} at module level; move it inside run() so --help stays fast"
