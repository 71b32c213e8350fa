"""Typed configuration: `load_config(path, overrides)` -> `JobConfig`."""

from stts_train.config.job import JobConfig, config_from_dict, dump_config, load_config

__all__ = ["JobConfig", "config_from_dict", "dump_config", "load_config"]
