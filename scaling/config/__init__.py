"""Run configuration: typed, frozen sections ([model] [data] [optim] [train]) read from TOML.

The names below are the public face of the package (`from scaling.config import Config,
load_config`); the modules behind it:

    sections.py    the sections [model] [data] [optim] [train], each with its checks
    run_config.py  Config (a whole run): checks across sections, identity keys, from_dict
    parse.py       ConfigError; reading values: TOML files, overrides, type checks, presets
    presets.py     named model shapes forming a size ladder (model.preset = "n100k")

Nothing here imports jax: a config is checked before anything trains.
"""

from scaling.config.parse import (ConfigError, build_section, coerce, parse_overrides, parse_value,
                                  preset_values, read_config_file)
from scaling.config.run_config import (IDENTITY_DEFAULTS, MUP_OPTIMIZERS, NON_SEMANTIC, Config,
                                       check_mup_optimizer, check_objective, from_dict,
                                       load_config, split_key)
from scaling.config.sections import (MESH_AXES, NON_FINITE_ALLOWED, OPTIMIZERS, SCHEDULES, SECTIONS,
                                     TASK_NAMES, TRACKERS, DataConfig, ModelConfig, OptimConfig,
                                     TrainConfig, check_tasks)

__all__ = ["IDENTITY_DEFAULTS", "MESH_AXES", "MUP_OPTIMIZERS", "NON_FINITE_ALLOWED", "NON_SEMANTIC",
           "OPTIMIZERS", "SCHEDULES", "SECTIONS", "TASK_NAMES", "TRACKERS", "Config", "ConfigError",
           "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "build_section",
           "check_mup_optimizer", "check_objective", "check_tasks", "coerce", "from_dict", "load_config",
           "parse_overrides", "parse_value", "preset_values", "read_config_file", "split_key"]
