"""The command line: --help everywhere, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stts_train.cli import COMMAND_MODULES, build_parser


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stts_train.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_top_level_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMAND_MODULES:
        assert name in out.stdout


def subcommand_paths():
    parser = build_parser()
    paths = []
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - walking argparse's tree
        for name, sub in action.choices.items():
            paths.append((name,))
            for sub_action in (
                getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []
            ):
                for sub_name in sub_action.choices:
                    paths.append((name, sub_name))
    return paths


@pytest.mark.parametrize("path", subcommand_paths(), ids=lambda p: " ".join(p))
def test_every_subcommand_has_help(path):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*path, "--help"])
    assert e.value.code == 0


@pytest.mark.slow
def test_bad_config_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nonsense: 1\n")
    out = run_cli("bench", "step", "--config", str(bad), "--frames", "4", "--keep", "1.0")
    assert out.returncode == 2
    assert "model.nonsense" in out.stderr and "Traceback" not in out.stderr
