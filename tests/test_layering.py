"""Import rules between packages, read from the source with `ast` (nothing is imported).

Layers of `stts_train`, low to high (a package imports only from its own layer or below):

    pipelines  <-  errors, config  <-  pruning  <-  models, data  <-  checkpoint  <-  parallel
        <-  train  <-  eval, bench, demo, conformance  <-  commands  <-  cli

(`models` and `data` share a layer: models read `data.batch.MicroBatch`, the loader builds the
tokenizer of `models.tokenizer`.) The rules below are the parts of that order checked here:

- model code (`stts_train.models`, `stts_train.pruning`) never imports distributed code, nor
  the layers that drive it (parallel, train, checkpoint, eval, commands);
- `models` imports `pruning` (budgets, selection, soft bias), never the reverse: the learned
  scorer, which needs the layer factory, is model code (`models/stts_scorer.py`);
- `pipelines` imports nothing from `stts_train` (its errors live in `pipelines/errors.py` and
  `stts_train.errors` re-exports them);
- `parallel` does not import `train`: the trainer hands `parallelize` its optimizer builder;
- `checkpoint` does not import `parallel` or `train`;
- only `stts_train/cli.py` imports `stts_train.commands`;
- no import cycle between the files of `stts_train/` and `pipelines/`.

Every import counts, including those inside functions (deferred for start-up time, they are
still dependencies); only absolute imports name other packages (relative ones stay in a package).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("stts_train", "pipelines")

DISTRIBUTED = ("torch.distributed", "deepspeed", "megatron", "ray")
ABOVE_MODELS = (
    "stts_train.parallel",
    "stts_train.train",
    "stts_train.checkpoint",
    "stts_train.eval",
    "stts_train.commands",
    "stts_train.cli",
)

RULES = {
    "stts_train/models": DISTRIBUTED + ABOVE_MODELS,
    "stts_train/pruning": DISTRIBUTED + ABOVE_MODELS + ("stts_train.models",),
    "pipelines": ("deepspeed", "megatron", "torch.distributed", "stts_train"),
    "stts_train/checkpoint": (
        "stts_train.parallel",
        "stts_train.train",
        "stts_train.eval",
        "stts_train.commands",
    ),
    "stts_train/parallel": ("stts_train.train", "stts_train.eval", "stts_train.commands"),
    "cluster": ("stts_train.models", "stts_train.pruning", "deepspeed", "megatron"),
}


def imports_of(path: Path) -> set[str]:
    """Absolute module names `path` imports anywhere (`from a import b` gives `a` and `a.b`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    """'<file> imports <module>' for each forbidden module (not repeated for its members)."""
    found: list[str] = []
    for name in sorted(imports_of(path)):
        if any(matches(name, f) for f in forbidden) and not any(matches(name, b) for b in found):
            found.append(name)
    return [f"{path.relative_to(REPO)} imports {name}" for name in found]


@pytest.mark.parametrize("folder", sorted(RULES))
def test_forbidden_imports(folder):
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        bad += violations(path, RULES[folder])
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_commands():
    allowed = {REPO / "stts_train" / "cli.py"}
    bad = []
    for root in (*SOURCE_ROOTS, "cluster"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path in allowed or (REPO / "stts_train" / "commands") in path.parents:
                continue
            bad += violations(path, ("stts_train.commands",))
    assert not bad, (
        "only stts_train/cli.py may import stts_train.commands; move the logic "
        "into the library and call it from the command:\n" + "\n".join(bad)
    )


def module_graph() -> dict[str, set[str]]:
    """File-level import graph of `stts_train/` and `pipelines/`: module -> modules it imports."""
    files = {}
    for root in SOURCE_ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imports_of(path):
            while name and name not in files:  # `from pkg.mod import func` -> pkg.mod
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search for a back edge)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_files():
    cycle = find_cycle(module_graph())
    assert cycle is None, (
        "import cycle: " + " -> ".join(cycle) + "; move the shared piece into its own module "
        "that both can import"
    )


def test_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_command_modules_import_only_stdlib_at_top_level():
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
                ok = top in sys.stdlib_module_names or top == "__future__"
                ok = ok or mod.startswith(allowed_prefixes)
                assert ok, (
                    f"{path.name} imports {mod} at module level; move it inside run() so --help "
                    "stays fast"
                )
