"""Trackers (TensorBoard, Weights & Biases) and the profiler switch of a training run.

`train.trackers` names them ("tensorboard,wandb"); metrics.jsonl ("jsonl") is always
written by the loop and is the record of truth; trackers mirror it for dashboards.

- tensorboard: event files in `<run>/tensorboard` (tensorboardX's writer, the optional
  extra `scalinglab[tensorboard]`). At step 0 the config as text (JSON) and as hparams
  (its scalar values, flattened to "section.key"); then every logged number as a scalar:
  training rows under `train/<key>`, curve evaluations under `eval/<key>`, the final
  evaluation under `eval_final/<key>`. A resumed run purges the events after its
  checkpoint's step, as metrics.jsonl is truncated there. Follow runs with
  `tensorboard --logdir <run or sweep folder>`.
- wandb: a W&B run (extra `scalinglab[wandb]`) in `<run>/wandb`. A sweep point
  (`<sweep>/points/<id>`) has the sweep's name as group, the point id as run id and its
  label as name; another folder has no group and `<folder name>-<8 hex of its absolute path>`
  as id (so two folders never share a W&B run). `resume="allow"`: a resumed point
  continues its W&B run. (W&B's history only grows: a run killed after its checkpoint
  logs some steps twice, and W&B may keep either copy or drop the second; metrics.jsonl
  and TensorBoard hold exactly the resumed curve.) Config as the run config; the same scalars as TensorBoard;
  result.json as the summary. WANDB_MODE=offline works with no network. W&B never stops
  training: a failure to start or to log is a warning, and the run goes on without it;
  `wandb.init` waits at most 30 s and the final upload at most 60 s.

Only process 0 writes (the loop passes `primary`). A missing package is a ConfigError
naming the extra, raised by `check_available` before anything is written.

Profiler: `train.profile_steps = "a,b"` traces steps a to b (1-based, inclusive) with
`jax.profiler` into `<run>/profile` (an `.xplane.pb` for TensorBoard's profile plugin and
a `.trace.json.gz` for Perfetto), on every process. The trace starts before step a is
dispatched and stops once step b's state is computed; a run resumed past step a is not
traced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from scaling.config import Config, ConfigError

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
PROFILE_DIR = "profile"
EXTRAS = {"tensorboard": ("tensorboardX", "scalinglab[tensorboard]"),
          "wandb": ("wandb", "scalinglab[wandb]")}
WANDB_INIT_TIMEOUT_S = 30.0  # then a warning, and the run trains without W&B
WANDB_FINISH_TIMEOUT_S = 60.0  # upload wait at the end; then W&B marks its run crashed


def check_available(cfg: Config) -> None:
    """ConfigError, naming the extra to install, for a tracker whose package is missing."""
    import importlib.util

    for name in cfg.train.tracker_names:
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"train.trackers = {cfg.train.trackers!r}: {name!r} needs the `{module}` "
                    f"package: pip install '{extra}'"
                )


def scalars(row: dict) -> tuple[str, dict[str, float]]:
    """(prefix, {key: value}) of the numbers of a metrics.jsonl row (step excluded):
    prefix "train", "eval" (curve evaluation) or "eval_final"."""
    if "eval_loss" in row:
        prefix = "eval_final" if row.get("eval_final") else "eval"
    else:
        prefix = "train"
    values = {k: float(v) for k, v in row.items()
              if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return prefix, values


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as {"section.key": value}, scalars only (hparams need scalars)."""
    out: dict[str, Any] = {"name": cfg.name}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, (int, float, str, bool)):
                    out[f"{section}.{k}"] = v
    return out


def wandb_identity(run_dir: Path) -> tuple[str | None, str, str]:
    """(group, run id, display name) of a run folder (module docstring). A sweep point is
    a folder under `<sweep>/points/` (its point.json, when there, names the sweep and
    the point's label)."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent.name == "points":
        try:
            meta = json.loads((run_dir / "point.json").read_text())
        except (OSError, ValueError):
            meta = {}
        sweep = str(meta.get("sweep") or run_dir.parent.parent.name)
        return sweep, _wandb_safe(run_dir.name), str(meta.get("label") or run_dir.name)
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    run_id = _wandb_safe(f"{run_dir.name}-{digest}")
    return None, run_id, run_dir.name


def _wandb_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:64]


class _TensorBoard:
    def __init__(self, cfg: Config, run_dir: Path, start_step: int):
        from tensorboardX import SummaryWriter

        logdir = run_dir / TENSORBOARD_DIR
        # purge_step: TensorBoard drops the older events at and after it (a resumed run).
        # The suffix keeps a second writer within the same second (a quick resume) from
        # overwriting the first's file, which tensorboardX names by the second and host.
        self.writer = SummaryWriter(logdir=str(logdir), filename_suffix=f".{time.time_ns()}",
                                    purge_step=start_step + 1 if start_step > 0 else None)
        if start_step == 0:
            self._write_config(cfg)

    def _write_config(self, cfg: Config) -> None:
        from tensorboardX.summary import hparams

        self.writer.add_text("config", "```\n" + cfg.to_json() + "\n```", 0)
        exp, ssi, sei = hparams(flat_config(cfg), {"eval_final/eval_loss": float("nan")})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def log(self, row: dict) -> None:
        prefix, values = scalars(row)
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self, result: dict | None) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        group, run_id, name = wandb_identity(run_dir)
        self.wandb = wandb
        settings = wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S,
                                  finish_timeout=WANDB_FINISH_TIMEOUT_S, console="off", silent=True,
                                  x_disable_stats=True, save_code=False, disable_git=True,
                                  x_save_requirements=False)
        self.run = wandb.init(project=cfg.train.wandb_project, group=group, id=run_id,
                              name=name, resume="allow",
                              dir=str(run_dir), config=cfg.to_dict(), settings=settings,
                              reinit="create_new")
        self.group, self.id = group, run_id

    def log(self, row: dict) -> None:
        prefix, values = scalars(row)
        self.run.log({f"{prefix}/{k}": v for k, v in values.items()}, step=int(row["step"]))

    def close(self, result: dict | None) -> None:
        if result is not None:
            self.run.summary.update({k: v for k, v in result.items()
                                     if not (isinstance(v, float) and math.isnan(v))})
        self.run.finish()


class Trackers:
    """The trackers of one call of `train`; every call is safe (W&B failures warn)."""

    def __init__(self, cfg: Config, run_dir: Path, start_step: int, primary: bool):
        self.active: dict[str, Any] = {}
        if not primary:
            return
        names = cfg.train.tracker_names
        if "tensorboard" in names:
            self.active["tensorboard"] = _TensorBoard(cfg, run_dir, start_step)
        if "wandb" in names:
            self._start_wandb(cfg, run_dir)

    def _start_wandb(self, cfg: Config, run_dir: Path) -> None:
        try:
            self.active["wandb"] = _WandB(cfg, run_dir)
        except Exception as e:  # no network, no login, service down: train without it
            log.warning("W&B tracking is off for this run (%s: %s); training goes on, "
                        "metrics.jsonl has every number", type(e).__name__, e)

    def log(self, row: dict) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, tracker.log, row)

    def close(self, result: dict | None) -> None:
        """Flush and close; `result` (result.json's content, or None when the run did not
        finish) becomes W&B's summary."""
        for name, tracker in list(self.active.items()):
            self._call(name, tracker.close, result)
        self.active.clear()

    def _call(self, name: str, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as e:
            if name != "wandb":
                raise
            log.warning("W&B logging failed (%s: %s); W&B is off for the rest of this run",
                        type(e).__name__, e)
            self.active.pop(name, None)


class Profiler:
    """Traces steps `train.profile_steps` of a run into <run>/profile (module docstring)."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.window = cfg.train.profile_window
        self.dir = run_dir / PROFILE_DIR
        self.running = False

    def before_step(self, step: int) -> None:
        """Called before step `step` (1-based) is dispatched."""
        if self.window is not None and step == self.window[0] and not self.running:
            import jax

            self.dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.dir))
            self.running = True
            log.info("profiling steps %d to %d into %s", *self.window, self.dir)

    def after_step(self, step: int, state) -> None:
        """Called once step `step` is dispatched; stops the trace after the window's last."""
        if self.running and step >= self.window[1]:
            self.stop(state)

    def stop(self, state=None) -> None:
        if not self.running:
            return
        import jax

        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.running = False
