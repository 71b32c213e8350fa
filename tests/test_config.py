"""Config loading: every experiment file validates; errors name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stts_train.config import dump_config, load_config
from stts_train.config.base import read_yaml_with_bases
from stts_train.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    # The resolved config round-trips through YAML (what runs and checkpoints store).
    import yaml

    dumped = yaml.safe_load(dump_config(cfg))
    assert (
        dumped["name"] == cfg.name
        and dumped["model"]["stts"]["keep_ratio"] == cfg.model.stts.keep_ratio
    )


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"tiny_cpu", "molmo2_4b_stts50", "bench_cpu", "demo"} <= names


def test_float_literals_without_a_dot():
    cfg = load_config(None, ["optim.scorer.lr=5e-4", "optim.llm.lr=1E-5"])
    assert cfg.optim.scorer.lr == 5e-4 and cfg.optim.llm.lr == 1e-5
    with pytest.raises(ConfigError, match="optim.llm.lr"):
        load_config(None, ["optim.llm.lr=fast"])


def test_dotted_overrides():
    cfg = load_config(
        CONFIGS[0].parent / "tiny_cpu.yaml",
        ["model.stts.keep_ratio=0.3", "train.num_steps=20", "data.max_fps=1"],
    )
    assert (
        cfg.model.stts.keep_ratio == 0.3 and cfg.train.num_steps == 20 and cfg.data.max_fps == 1.0
    )


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  stts:\n    keep_ration: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "model.stts.keep_ration" in str(e.value) and str(f) in str(e.value)
    with pytest.raises(ConfigError, match="train.num_stepz"):
        load_config(CONFIGS[0].parent / "tiny_cpu.yaml", ["train.num_stepz=3"])


def test_wrong_type_and_out_of_range(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  num_steps: many\n")
    with pytest.raises(ConfigError, match="train.num_steps"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"keep_ratio=1.3 must be in \(0, 1\]"):
        load_config(None, ["model.stts.keep_ratio=1.3"])
    with pytest.raises(ConfigError, match="keep_ratio=0"):
        load_config(None, ["model.stts.keep_ratio=0"])


def test_grid_not_divisible_by_pool():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, ["model.vit.image_size=56", "model.vit.patch_size=14"])


def test_base_chain_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  num_steps: 7\n  seed: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  seed: 5\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.train.num_steps == 7 and cfg.train.seed == 5
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        read_yaml_with_bases(tmp_path / "c.yaml")


def test_yaml_is_parsed_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
