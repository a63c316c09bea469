"""The records a plan is made of (Point, SweepSpec), compute accounting, point ids, labels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.accounting import counts as accounting
from scaling.config import Config, ModelConfig


@dataclass(frozen=True)
class Point:
    """One run of a sweep, fully resolved: what it will compute, exactly.

    Both compute figures are kept for every point: `flops_6nd` = 6 N D (N non-embedding,
    Kaplan) and `flops_exact` = the real training FLOPs (3 x every forward matmul, head
    and attention included, times D). `flops` is the one the spec's `accounting` counts
    (see `charged_per_token`), and `tokens_per_param` is D over that accounting's N.
    """

    point_id: str
    config: Config
    group: str
    compute_budget: float | None  # the IsoFLOP budget, in the accounting's FLOPs; else None
    n_params: int  # N, non-embedding
    n_params_total: int
    tokens: int  # D = steps * batch_size * seq_len
    flops: float  # C under `accounting`: flops_exact (total) or flops_6nd (kaplan)
    accounting: str  # "total" or "kaplan"
    flops_6nd: float  # 6 N D, N non-embedding
    flops_exact: float  # 3 x forward matmul FLOPs per token x D
    tokens_per_param: float  # D / N_total (total) or D / N non-embedding (kaplan)
    requested: dict = field(default_factory=dict)

    @property
    def n_accounted(self) -> int:
        """N as the point's accounting counts it: N_total (total), non-embedding (kaplan)."""
        return self.n_params_total if self.accounting == "total" else self.n_params

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def role(self) -> str:
        """"trunk" or "branch" (cooldown branches, scaling.sweep.cooldown), else "run"."""
        return self.requested.get("role", "run")

    @property
    def depends_on(self) -> str | None:
        """The id of the trunk whose checkpoint a branch starts from; None for other points."""
        return self.requested.get("trunk") if self.role == "branch" else None

    @property
    def branched_at_step(self) -> int | None:
        """The trunk step a branch starts from (k); None for other points."""
        return self.requested.get("branched_at_step") if self.role == "branch" else None

    @property
    def spent_steps(self) -> int:
        """Steps this point itself trains: a branch only its cooldown (steps - k)."""
        k = self.branched_at_step
        return self.steps - k if k is not None else self.steps

    @property
    def spent_fraction(self) -> float:
        return self.spent_steps / self.steps

    @property
    def flops_spent(self) -> float:
        """C_spent: the compute this point itself spends, under its accounting."""
        return self.flops * self.spent_fraction

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
    accounting: str = "total"  # how every point's C and D/N are counted (ACCOUNTINGS)
    # point id -> resize(size) for IsoFLOP points: the same point planned at another size
    # (made by scaling.sweep.plan; used by the bracketing stage)
    resizers: dict = field(default_factory=dict, compare=False, repr=False)
    cooldown: tuple[dict, ...] = ()  # the [sweep.cooldown] tables in use

    def resize(self, point: Point, *, preset: str | None = None,
               n_target: float | None = None,
               budget: float | None = None) -> tuple[Point | None, str]:
        """`point` planned at another size by its own [sweep] table's rules, or (None, why not).

        Same budget, accounting, axes, [[override]] tables, warm-up, lr law and cooldown
        rule; the size is a preset or a target N snapped by the table's shape rule.
        `budget`: D from this compute budget instead (no tokens_per_param_range).
        """
        if point.point_id not in self.resizers:
            return None, f"point {point.label} is not an IsoFLOP point of this spec's [sweep]"
        new, why_not, resizer = self.resizers[point.point_id](preset=preset, n_target=n_target,
                                                             budget=budget)
        if new is not None:  # a point added this way can be resized in turn
            self.resizers.setdefault(new.point_id, resizer)
        return new, why_not


# Keys that do not change what a point computes (beyond scaling.config.NON_SEMANTIC):
# left out of point ids (and of the keys cooldown groups compare).
LABEL_ONLY = ("model.preset", "data.cache_dir")


# --------------------------------------------------------------------------------------
# Accounting (scaling.accounting.counts when present; the closed form otherwise)
# --------------------------------------------------------------------------------------


def param_counts(m: ModelConfig) -> tuple[int, int]:
    """(N non-embedding, N total), from scaling.accounting.counts's closed form."""
    pc = accounting.param_counts(m)
    return int(pc.non_embedding), int(pc.total)


def train_flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token including attention and the head (3 x forward)."""
    return float(accounting.flops_per_token(m).exact)


# How a spec counts compute. "total": real training FLOPs with N = all parameters, as
# Chinchilla (Hoffmann et al. 2022) counts; "kaplan": 6 N D with N non-embedding (Kaplan
# et al. 2020). At small sizes the two differ by 1.25-2.8x (issue 10).
ACCOUNTINGS = ("total", "kaplan")


def charged_per_token(m: ModelConfig, how: str) -> tuple[float, int]:
    """(training FLOPs charged per token, N) under the accounting `how`.

    total: (3 x every forward matmul per token, head and attention included; N_total);
    kaplan: (6 N, N non-embedding). A budget C then buys D = C / (FLOPs per token), and
    "tokens per parameter" means D / N with this N.
    """
    n, n_total = param_counts(m)
    if how == "total":
        return train_flops_per_token(m), n_total
    if how == "kaplan":
        return 6.0 * n, n
    raise ValueError(f"accounting {how!r}: allowed: {', '.join(ACCOUNTINGS)}")


def point_id(config: Config) -> str:
    """First 12 hex digits of sha256 of the config's canonical JSON, less non-semantic keys."""
    if hasattr(config, "semantic_dict"):
        d = config.semantic_dict()
    else:
        d = config.to_dict()
        d.pop("name", None)
        for k in ("progress", "parallel", "log_every", "checkpoint_every", "keep_checkpoints"):
            d["train"].pop(k, None)
    for dotted in LABEL_ONLY:
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


def axis_label(dotted: str, value: Any) -> str:
    """The label part of one axis value: "lr3e-3", "s1", "adamw", "d_model-64"."""
    if dotted == "optim.name":
        return str(value)
    short = _SHORT.get(dotted, dotted.split(".", 1)[1] + "-")
    return f"{short}{format_num(value)}"


def format_num(x: Any) -> str:
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


def format_si(x: float) -> str:
    """98.3k, 1.97M, 4.2G."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def size_label_of(n: int) -> str:
    """The size label of a point without a preset: "n98.3k" for N = 98,304."""
    return "n" + format_si(n)
