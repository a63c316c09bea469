"""`Config`, a whole run: its sections, the checks across them, and building one.

A `Config` loads from a TOML file with sections `[model]`, `[data]`, `[optim]`,
`[train]` (plus an optional top-level `name`) and takes `section.key=value`
overrides from the command line. Every value is checked before anything is
compiled: an unknown key, a wrong type or an impossible value raises
`ConfigError` naming the key and what is allowed.

    cfg = load_config("experiments/tiny.toml", ["model.d_model=256", "optim.lr=1e-3"])

Also here: which keys enter a run's identity (NON_SEMANTIC, IDENTITY_DEFAULTS) and
`split_key` ("model.d_model" or a bare key -> its section).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config.parse import (ConfigError, build_section, field_names, parse_overrides,
                                  preset_values, read_config_file, suggest)
from scaling.config.sections import (SECTIONS, DataConfig, ModelConfig, OptimConfig, TrainConfig,
                                     check_finite, check_tasks)


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        for section in SECTIONS:
            check_finite(getattr(self, section), section)
            getattr(self, section).validate()
        check_mup_optimizer(self.model, self.optim)
        check_objective(self.model, self.data)
        if self.train.eval_per_position and self.data.objective != "next_token":
            raise ConfigError(
                f"train.eval_per_position = true with data.objective = {self.data.objective!r}: "
                "the loss by window position is defined for next-token prediction only")
        if self.optim.warmup_steps >= self.train.steps:
            raise ConfigError(
                f"optim.warmup_steps = {self.optim.warmup_steps} must be smaller than "
                f"train.steps = {self.train.steps}"
            )
        if self.data.tasks:
            if self.data.objective != "next_token":
                raise ConfigError(
                    f"data.tasks with data.objective = {self.data.objective!r}: task evals decode "
                    "answers token by token, which needs a next-token (causal) model; use "
                    "model.arch = 'transformer' or 'lstm'")
            check_tasks(self.data.tasks, self.train.batch_size)
        for key in ("eval_tokens", "curve_eval_tokens"):
            value = getattr(self.train, key)
            if value and value < self.model.seq_len:
                raise ConfigError(
                    f"train.{key} = {value} is less than one window of model.seq_len = "
                    f"{self.model.seq_len} tokens; use a multiple of seq_len"
                    + (" (or 0: the same as eval_tokens)" if key == "curve_eval_tokens" else "")
                )
        if self.data.is_token_shards:
            if self.model.vocab_size < self.data.tokens_vocab_size:
                raise ConfigError(
                    f"model.vocab_size = {self.model.vocab_size} is smaller than "
                    f"data.tokens_vocab_size = {self.data.tokens_vocab_size}"
                )
        elif self.data.tokenizer == "byte" and self.model.vocab_size < 256:
            raise ConfigError(
                f"model.vocab_size = {self.model.vocab_size}: the byte tokenizer needs >= 256"
            )
        if self.data.tokenizer == "bpe" and self.model.vocab_size < self.data.bpe_vocab_size:
            raise ConfigError(
                f"model.vocab_size = {self.model.vocab_size} is smaller than "
                f"data.bpe_vocab_size = {self.data.bpe_vocab_size}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def semantic_dict(self) -> dict[str, Any]:
        """The config less the keys that do not change what is computed (see NON_SEMANTIC)."""
        d = self.to_dict()
        for dotted in NON_SEMANTIC:
            section, _, key = dotted.partition(".")
            if key:
                d[section].pop(key, None)
            else:
                d.pop(section, None)
        for dotted, default in IDENTITY_DEFAULTS.items():
            section, key = dotted.split(".")
            if d.get(section, {}).get(key, default) == default:
                d.get(section, {}).pop(key, None)
        return d

    def replace(self, overrides: dict[str, Any] | list[str] | None = None) -> "Config":
        """A new, validated config with `section.key` overrides applied."""
        return from_dict(self.to_dict(), overrides)

# Optimizers for which µP defines per-layer learning-rate rules (Yang et al. 2022, Table 3:
# the Adam rule and the SGD rule; momentum/Nesterov follow SGD's).
MUP_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def check_mup_optimizer(model: "ModelConfig", optim: "OptimConfig") -> None:
    """Refuse µP with an optimizer for which µP defines no rule (LARS, LAMB)."""
    if model.parametrization == "mup" and optim.name not in MUP_OPTIMIZERS:
        raise ConfigError(
            f"model.parametrization = 'mup' with optim.name = {optim.name!r}: µP defines "
            f"per-layer learning rates only for {', '.join(MUP_OPTIMIZERS)}. LARS and LAMB "
            "already normalise each layer's step by its trust ratio ||w|| / ||update||, which "
            "replaces the per-layer width scaling µP would apply; use model.parametrization = "
            "'sp' with them")


def check_objective(model: "ModelConfig", data: "DataConfig") -> None:
    """The encoder trains only on the masked-LM objective, and the masked-LM objective only
    trains the encoder (a causal model would see no useful signal from it, and the
    encoder would see its targets under the next-token objective)."""
    if (model.arch == "encoder") != (data.objective == "mlm"):
        raise ConfigError(
            f"model.arch = {model.arch!r} with data.objective = {data.objective!r}: the "
            "masked-LM objective goes with the bidirectional encoder only; use "
            "model.arch = 'encoder' with data.objective = 'mlm', or model.arch = "
            "'transformer' / 'lstm' with data.objective = 'next_token'")


# Keys that change how a run is executed or shown, not what it computes: a run may be
# resumed with other values, and they do not enter a sweep point's identity.
NON_SEMANTIC = ("name", "train.progress", "train.parallel", "train.mesh", "train.log_every",
                "train.checkpoint_every", "train.keep_checkpoints",
                # a cooldown branch computes exactly what a separate run of its config would
                "train.init_from", "train.init_step", "train.save_steps", "train.eval_steps",
                # trackers and the profiler watch a run; they do not change it
                "train.trackers", "train.wandb_project", "train.profile_steps")

# Keys added after sweeps already existed: at these values they are left out of a point's
# identity, so a sweep started before the key existed resumes into the same folders.
IDENTITY_DEFAULTS: dict[str, Any] = {"model.arch": "transformer",
                                     "data.objective": "next_token",
                                     "train.eval_per_position": False,
                                     # on one device without micro-batches it splits the
                                     # batch in two (scaling.train.noise_scale): semantic
                                     "train.noise_scale": False,
                                     "data.tasks": {}}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Config from a TOML (or JSON) file, with `section.key=value` overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path)
        raw.setdefault("name", Path(path).stem)
    return from_dict(raw, overrides)


def from_dict(raw: dict[str, Any], overrides: list[str] | dict | None = None) -> Config:
    """Build and validate a Config from nested dicts ({'model': {...}, ...})."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key in raw:
        if key != "name" and key not in SECTIONS:
            raise ConfigError(
                f"unknown config section {key!r}{suggest(key, ['name', *SECTIONS])}; "
                f"allowed: 'name', {', '.join(repr(s) for s in SECTIONS)}"
            )
    for dotted, value in parse_overrides(overrides).items():
        section, key = split_key(dotted)
        if section == "name":
            raw["name"] = value
        else:
            raw.setdefault(section, {})[key] = value
    sections = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of key = value, got {values!r}")
        if section == "model" and values.get("preset"):
            values = {**preset_values(values["preset"], values.get("arch", "transformer")),
                      **values}
        sections[section] = build_section(cls, section, values)
    name = raw.get("name", "run")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name = {name!r}: must be a non-empty string")
    return Config(name=name, **sections).validate()


def split_key(dotted: str) -> tuple[str, str]:
    """'model.d_model' -> ('model', 'd_model'); a bare key is looked up in all sections."""
    if dotted == "name":
        return "name", ""
    if "." in dotted:
        section, key = dotted.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r} in {dotted!r}"
                f"{suggest(section, list(SECTIONS))}; allowed: {', '.join(SECTIONS)}"
            )
        return section, key
    owners = [s for s, cls in SECTIONS.items() if dotted in field_names(cls)]
    if len(owners) == 1:
        return owners[0], dotted
    if len(owners) > 1:
        raise ConfigError(
            f"key {dotted!r} is ambiguous: write one of {', '.join(f'{s}.{dotted}' for s in owners)}"
        )
    every = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in field_names(cls)]
    raise ConfigError(f"unknown config key {dotted!r}{suggest(dotted, every)}")
