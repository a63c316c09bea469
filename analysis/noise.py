"""The measurement noise of each run's loss, and parametric (noise-aware) bootstrap replicates.

Scaling-law designs (IsoFLOP grids, L(N, D) grids) fix the sizes and token counts by design:
they are not drawn from a population, so resampling runs with replacement (the case
bootstrap) answers the wrong question and, for IsoFLOP grids, often leaves a budget with too
few distinct sizes. The noise-aware bootstrap keeps the design fixed and perturbs each run's
loss by its own measured noise, then refits.

Where each run's noise comes from, in order of preference (:func:`loss_noise`):

1. seed-to-seed spread: where some (N, D) cells were run with several seeds, the pooled
   relative standard deviation of one run (median over those cells of std / mean), divided by
   sqrt(number of seeds averaged in the cell). It contains the eval-set noise and the
   training noise (data order, initialisation), so it is the relevant one where it exists;
2. ``eval_loss_stderr``: the standard error of the eval loss over the eval windows (the
   measurement issue), divided by sqrt(seeds) where seeds were averaged;
3. neither: an assumed relative noise, stated in the report (:data:`DEFAULT_REL_NOISE`, or a
   fit's own residual scale where the fit says so).

Replicates are log-normal, ``log L_b = log L + (sigma / L) z`` with z ~ N(0, 1): the same
relative noise, and a loss that stays positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# the eval-set target of the measurement issue: stderr <= 0.5 % of the loss
DEFAULT_REL_NOISE = 0.005


@dataclass
class LossNoise:
    """``sigma``: absolute standard error of each row's loss; ``source``: where it came from,
    in words, for captions (e.g. "seed spread (3 seeds, 0.41 %)")."""

    sigma: np.ndarray
    source: str

    @property
    def relative_median(self) -> float:
        return float("nan") if self.sigma.size == 0 else float(np.nanmedian(self.sigma))

    def short(self) -> str:
        return self.source


def assumed_noise(loss, rel: float = DEFAULT_REL_NOISE, why: str = "no eval_loss_stderr, no seeds") -> LossNoise:
    L = np.asarray(loss, dtype=np.float64)
    return LossNoise(sigma=rel * L, source=f"assumed {rel * 100:.2g} % relative noise ({why})")


def loss_noise(rows: pd.DataFrame, *, loss_col: str = "loss", default_rel: float = DEFAULT_REL_NOISE) -> LossNoise:
    """Per-row noise of ``rows[loss_col]`` (see the module docstring for the rule).

    ``rows`` may carry ``n_seeds`` and ``seed_std`` (cells averaged over seeds, from
    :func:`analysis.report.scaling_rows`) and ``eval_loss_stderr``."""
    L = pd.to_numeric(rows[loss_col], errors="coerce").to_numpy(float)
    n_seeds = rows["n_seeds"].to_numpy(float) if "n_seeds" in rows else np.ones(L.size)
    n_seeds = np.where(np.isfinite(n_seeds) & (n_seeds >= 1), n_seeds, 1.0)
    if "seed_std" in rows:
        sd = rows["seed_std"].to_numpy(float)
        multi = (n_seeds >= 2) & np.isfinite(sd) & (sd >= 0) & (L > 0)
        if multi.any():
            rel = float(np.median(sd[multi] / L[multi]))
            if rel > 0:
                return LossNoise(sigma=rel * L / np.sqrt(n_seeds),
                                 source=f"seed spread ({int(multi.sum())} cells with 2+ seeds; "
                                        f"{rel * 100:.2g} % per run)")
    if "eval_loss_stderr" in rows:
        se = pd.to_numeric(rows["eval_loss_stderr"], errors="coerce").to_numpy(float)
        good = np.isfinite(se) & (se > 0)
        if good.all() and good.size:
            rel = float(np.median(se / L))
            return LossNoise(sigma=se / np.sqrt(n_seeds),
                             source=f"eval_loss_stderr (median {rel * 100:.2g} % of the loss)")
        if good.any():
            rel = float(np.median(se[good] / L[good]))
            sig = np.where(good, se, rel * L) / np.sqrt(n_seeds)
            return LossNoise(sigma=sig, source=f"eval_loss_stderr ({int(good.sum())} of {good.size} "
                                               f"rows; the others at its median, {rel * 100:.2g} %)")
    return assumed_noise(L, default_rel)


def seed_cells(rows: pd.DataFrame, keys: list[str], *, mean: tuple[str, ...] = ("N", "D"),
               first: tuple[str, ...] = ("point_id",)) -> pd.DataFrame:
    """One row per group of `keys` (the runs of one cell: its seeds): the mean loss, the
    mean of each column in `mean`, `n_seeds` and `seed_std` (what :func:`loss_noise` reads),
    the mean `eval_loss_stderr`, and the first value of each column in `first`; the keys
    become columns. Columns that `rows` lacks are left out."""
    agg = {"loss": ("loss", "mean")}
    agg.update({c: (c, "mean") for c in mean if c in rows})
    agg.update(n_seeds=("loss", "size"), seed_std=("loss", "std"))
    if "eval_loss_stderr" in rows:
        rows = rows.assign(eval_loss_stderr=pd.to_numeric(rows["eval_loss_stderr"], errors="coerce"))
        agg["eval_loss_stderr"] = ("eval_loss_stderr", "mean")
    agg.update({c: (c, "first") for c in first if c in rows})
    return rows.groupby(keys, dropna=False).agg(**agg).reset_index()


def noise_replicates(loss, sigma, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) losses: log L + (sigma / L) z, z ~ N(0, 1) independent per run and replicate."""
    L = np.asarray(loss, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64) / L
    z = rng.standard_normal((n_boot, L.size))
    return L[None, :] * np.exp(s[None, :] * z)
