"""A run's first phase: every check that bad input can fail, before anything is written.

`prepare(cfg, run_dir) -> Setup` checks the config against the run folder (a folder
holding a run of another config is refused), the devices (the batch splits over them),
the corpus (the tokenizer's vocabulary fits the model) and, for a cooldown branch
(`train.init_from`), its trunk (`trunk_config`: the same run up to `train.init_step`,
learning rate included, or `TrunkNotReady`); it builds what every later phase is handed:
the driver, the data (masked for the MLM objective), the trainer and the counts.
Nothing is written to the run folder and nothing is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scaling.accounting import counts as accounting
from scaling.config import Config, ConfigError, from_dict
from scaling.data.dataset import TokenData, load_corpus
from scaling.data.masking import MaskedTokenData
from scaling.models import encoder
from scaling.runs.runfiles import CONFIG_FILE, read_json
from scaling.train import tracking
from scaling.train.parallel import Driver, check_batch, make_driver
from scaling.train.schedules import schedule_multiplier
from scaling.train.step import Trainer, runtime_values


@dataclass
class Setup:
    """Everything a run needs, built once by `prepare` and handed to every later phase."""

    cfg: Config
    run_dir: Path
    driver: Driver
    data: TokenData
    trainer: Trainer
    counts: accounting.ParamCounts
    flops: accounting.FlopCounts
    primary: bool

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.seq_len


def load_config_file(run_dir: str | Path) -> Config:
    """The config.json of a run folder; ConfigError (naming the file) if it is unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    raw = read_json(path)  # CorruptRunFile (a ConfigError naming the file) if garbled
    if raw is None:
        raise ConfigError(f"{path} does not exist")
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """ConfigError if the folder holds a run (finished or not) of a different config."""
    if (run_dir / CONFIG_FILE).exists():
        if load_config_file(run_dir).semantic_dict() != cfg.semantic_dict():
            raise ConfigError(
                f"{run_dir} holds a run of a different config; nothing is overwritten. "
                "Use another run folder."
            )


def prepare(cfg: Config, run_dir: Path) -> Setup:
    """Check the config against the run folder, the devices and the corpus; write nothing."""
    check_same_config(cfg, run_dir)
    t, m = cfg.train, cfg.model
    driver = make_driver(t.parallel, t.mesh_axes)
    check_batch(t.batch_size, t.micro_batches, driver.data_shards, t.noise_scale,
                "devices" if driver.kind != "mesh" else "batch shards (train.mesh data x fsdp)")
    data = load_corpus(cfg.data, m.seq_len)
    if data.vocab_size > m.vocab_size:
        raise ConfigError(
            f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({data.vocab_size}); set model.vocab_size >= {data.vocab_size}"
        )
    if cfg.data.objective == "mlm":  # masked batches and eval set
        data = MaskedTokenData(data, mask_id=encoder.mask_id(m))
    if t.init_from:
        trunk_config(cfg, run_dir)
    tracking.check_available(cfg)
    return Setup(cfg, run_dir, driver, data, Trainer(cfg), accounting.param_counts(m),
                 accounting.flops_per_token(m), primary=jax.process_index() == 0)


# --------------------------------------------------------------------------------------
# A cooldown branch's trunk: where it is, and that it is this run up to init_step
# --------------------------------------------------------------------------------------


class TrunkNotReady(RuntimeError):
    """A cooldown branch's trunk has not yet saved the checkpoint the branch starts from."""


def trunk_dir(cfg: Config, run_dir: Path) -> Path:
    """The folder of `train.init_from` (relative paths are relative to the run's folder)."""
    p = Path(cfg.train.init_from).expanduser()
    return p if p.is_absolute() else (run_dir / p).resolve()


def trunk_config(cfg: Config, run_dir: Path) -> tuple[Path, Config]:
    """The trunk's folder and config, checked to be this branch's run up to init_step."""
    tdir = trunk_dir(cfg, run_dir)
    if not (tdir / CONFIG_FILE).exists():
        raise TrunkNotReady(f"train.init_from = {cfg.train.init_from!r}: {tdir} holds no run "
                            "yet; run the trunk first")
    trunk_cfg = load_config_file(tdir)
    check_branchable(cfg, trunk_cfg, tdir)
    return tdir, trunk_cfg


def check_branchable(cfg: Config, trunk: Config, tdir: Path) -> None:
    """Refuse a trunk that is not the same run as this branch up to init_step."""
    mine, theirs = cfg.semantic_dict(), trunk.semantic_dict()
    schedule_keys = {"schedule", "decay_fraction", "decay_shape", "final_lr_ratio"}
    # Length and when and how much to evaluate do not change the trained weights.
    free_train_keys = {"steps", "eval_every", "eval_tokens", "curve_eval_tokens"}
    for d in (mine, theirs):
        for k in free_train_keys:
            d["train"].pop(k, None)
        for k in schedule_keys:
            d["optim"].pop(k, None)
    if mine != theirs:
        diff = sorted(f"{sec}.{k}" for sec in mine for k in set(mine[sec]) | set(theirs.get(sec, {}))
                      if isinstance(mine[sec], dict) and mine[sec].get(k) != theirs.get(sec, {}).get(k))
        raise ConfigError(f"train.init_from = {cfg.train.init_from!r}: the trunk {tdir} differs "
                          f"from this run in {', '.join(diff) or 'its config'}; a branch must "
                          "differ only in its schedule and length")
    k = cfg.train.init_step
    ours, trunks = learning_rates(cfg, k), learning_rates(trunk, k)
    if not np.array_equal(ours, trunks):
        first = int(np.argmax(ours != trunks))
        raise ConfigError(
            f"train.init_from = {cfg.train.init_from!r}: the trunk's learning rate differs from "
            f"this run's at step {first} ({trunks[first]:.6g} vs {ours[first]:.6g}), before "
            f"train.init_step = {k}; the branch's decay must start at or after init_step"
        )


def learning_rates(cfg: Config, n: int) -> np.ndarray:
    """The learning rate of each of the first n steps of a run of `cfg`, as the step
    computes it (peak lr x schedule_multiplier, float32)."""
    lr, sched = runtime_values(cfg)
    # one compiled program per power-of-two length: op-by-op dispatch would compile every
    # operation anew for each new n (~1 s per branch, twice)
    padded = 1 << max(int(n) - 1, 1).bit_length()
    return np.asarray(_schedule_values(jnp.arange(padded), sched))[:n] * lr


_schedule_values = jax.jit(jax.vmap(schedule_multiplier, in_axes=(0, None)))
