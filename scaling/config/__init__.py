"""Run configuration: typed, frozen sections ([model] [data] [optim] [train]) read from TOML.

The names below are the public face of the package (`from scaling.config import Config,
load_config`); the modules behind it:

    schema.py    the sections, their checks, and reading them from TOML and overrides
    presets.py   named model shapes forming a size ladder (model.preset = "n100k")

Nothing here imports jax: a config is checked before anything trains.
"""

from scaling.config.schema import (IDENTITY_DEFAULTS, MUP_OPTIMIZERS, NON_FINITE_ALLOWED,
                                   NON_SEMANTIC, OPTIMIZERS, SCHEDULES, SECTIONS, TASK_NAMES,
                                   TRACKERS,
                                   Config, ConfigError, DataConfig, ModelConfig, OptimConfig,
                                   TrainConfig, build_section, check_mup_optimizer, check_tasks,
                                   check_objective, coerce, from_dict, load_config,
                                   parse_overrides, parse_value, preset_values,
                                   read_config_file, split_key)

__all__ = ["IDENTITY_DEFAULTS", "MUP_OPTIMIZERS", "NON_FINITE_ALLOWED", "NON_SEMANTIC",
           "OPTIMIZERS", "SCHEDULES", "SECTIONS", "TASK_NAMES", "TRACKERS", "Config", "ConfigError",
           "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "build_section",
           "check_mup_optimizer", "check_objective", "check_tasks", "coerce", "from_dict", "load_config",
           "parse_overrides", "parse_value", "preset_values", "read_config_file", "split_key"]
