"""The records a plan is made of (Point, SweepSpec), point ids, and the labels' numbers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling import accounting
from scaling.config import Config, ModelConfig


@dataclass(frozen=True)
class Point:
    """One run of a sweep, fully resolved: what it will compute, exactly."""

    point_id: str
    config: Config
    group: str
    compute_budget: float | None
    n_params: int  # N, non-embedding
    n_params_total: int
    tokens: int  # D = steps * batch_size * seq_len
    flops: float  # C = 6 N D
    tokens_per_param: float
    requested: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def label(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    executor: str
    slurm: dict
    points: tuple[Point, ...]
    raw: dict
    description: str = ""
    variant: str | None = None
    followup: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # dropped sizes, de-duplicated points, ...



# Keys that do not change what a point computes (beyond scaling.config.NON_SEMANTIC).
_LABEL_ONLY = ("model.preset", "data.cache_dir")


# --------------------------------------------------------------------------------------
# Accounting (scaling.accounting when present; the closed form otherwise)
# --------------------------------------------------------------------------------------


def param_counts(m: ModelConfig) -> tuple[int, int]:
    """(N non-embedding, N total), from scaling.accounting's closed form."""
    pc = accounting.param_counts(m)
    return int(pc.non_embedding), int(pc.total)


def train_flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token including attention and the head (3 x forward)."""
    return float(accounting.flops_per_token(m).exact)



def point_id(config: Config) -> str:
    """First 12 hex digits of sha256 of the config's canonical JSON, less non-semantic keys."""
    if hasattr(config, "semantic_dict"):
        d = config.semantic_dict()
    else:
        d = config.to_dict()
        d.pop("name", None)
        for k in ("progress", "parallel", "log_every", "checkpoint_every", "keep_checkpoints"):
            d["train"].pop(k, None)
    for dotted in _LABEL_ONLY:
        section, key = dotted.split(".")
        d.get(section, {}).pop(key, None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------
# Labels and numbers
# --------------------------------------------------------------------------------------

_SHORT = {"optim.lr": "lr", "train.batch_size": "bs", "train.seed": "s",
          "optim.weight_decay": "wd", "optim.warmup_steps": "wu", "model.seq_len": "T",
          "optim.clip_norm": "clip", "optim.schedule": ""}


def _axis_label(dotted: str, value: Any) -> str:
    if dotted == "optim.name":
        return str(value)
    short = _SHORT.get(dotted, dotted.split(".", 1)[1] + "-")
    return f"{short}{_num(value)}"


def _num(x: Any) -> str:
    """3e-3, 0.05, 20, 1e13: short and exact enough for labels and budget names."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    mant, exp = f"{x:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _si(x: float) -> str:
    """98.3k, 1.97M, 4.2G."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _size_label(n: int) -> str:
    return "n" + _si(n)
