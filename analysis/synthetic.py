"""Synthetic sweep folders drawn from known laws, for tests and demonstrations.

``make_scaling_sweep`` writes an IsoFLOP design (several compute budgets, several sizes
per budget) with learning curves; ``make_optimizer_sweep`` writes a learning-rate x size x
seed grid for several optimizers. Both write ``results.csv``, ``results.parquet`` and
(scaling sweep) ``curves.parquet`` + ``curves.csv`` in the sweep runner's format (see
ARCHITECTURE.md and analysis/load.py), including a few failed and diverged points.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

# Hoffmann et al. (2022)'s published fit: a = beta / (alpha + beta) = 0.4516
TRUE_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# A law whose IsoFLOP profiles are clearly asymmetric in log N (alpha = 2 beta: one decade
# below the optimum the loss rises 1.5x as much as one decade above it; TRUE_LAW: 1.1x),
# as measured profiles are; a = 1/3
ASYMMETRIC_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.5, "beta": 0.25}

RESULT_COLUMNS = [
    "sweep", "point_id", "status", "N", "N_total", "D", "C", "C_xla", "C_exact",
    "final_train_loss", "final_eval_loss", "best_eval_loss", "steps", "batch_size", "seq_len",
    "n_layer", "d_model", "n_head", "optimizer", "lr", "schedule", "warmup_steps",
    "weight_decay", "seed", "tokens_per_param", "compute_budget", "group", "wall_time_s",
    "compile_time_s", "tokens_per_s", "mfu", "device_kind", "device_count", "jax_version",
    "corpus_fingerprint", "git_commit",
]


def law_loss(N, D, law: dict = TRUE_LAW):
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def true_exponent(law: dict = TRUE_LAW) -> float:
    """The allocation exponent a = beta / (alpha + beta) of N_opt ~ C^a under C = 6 N D."""
    return law["beta"] / (law["alpha"] + law["beta"])


def profile_asymmetry(law: dict = TRUE_LAW, C: float = 1e18, decades: float = 1.0) -> float:
    """How asymmetric the IsoFLOP profile of ``law`` is in log N at budget C: the loss rise
    ``decades`` below the optimal N over the rise as far above it (1: symmetric)."""
    n, _ = true_optimum(C, law)
    rise = [float(law_loss(n * 10 ** s, C / (6 * n * 10 ** s), law) / law_loss(n, C / (6 * n), law)) - 1
            for s in (-decades, decades)]
    return rise[0] / rise[1]


def true_optimum(C, law: dict = TRUE_LAW):
    """Compute-optimal N, D under C = 6 N D for ``law``."""
    al, be, A, B = law["alpha"], law["beta"], law["A"], law["B"]
    G = (al * A / (be * B)) ** (1 / (al + be))
    C = np.asarray(C, dtype=np.float64)
    return G * (C / 6) ** (be / (al + be)), (C / 6) ** (al / (al + be)) / G


def _pid(*parts) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _shape(N: float) -> tuple[int, int, int]:
    """A plausible (n_layer, d_model, n_head) with 12 n_layer d_model^2 close to N."""
    best = None
    for n_layer in (2, 4, 6, 8, 12, 16, 24, 32):
        d = max(64, int(round(math.sqrt(N / (12 * n_layer)) / 64)) * 64)
        err = abs(math.log(12 * n_layer * d * d / N))
        if best is None or err < best[0]:
            best = (err, n_layer, d)
    return best[1], best[2], max(1, best[2] // 64)


def _row(sweep, pid, status, N, D, loss, *, optimizer="adamw", lr=3e-3, seed=0,
         compute_budget=math.nan, group="", seq_len=256, batch_size=32):
    n_layer, d_model, n_head = _shape(N)
    steps = max(1, int(round(D / (batch_size * seq_len))))
    C = 6 * N * D
    ok = status == "done"
    return {
        "sweep": sweep, "point_id": pid, "status": status, "N": N,
        "N_total": N + 256 * d_model, "D": D, "C": C, "C_xla": C * 1.08, "C_exact": C * 1.05,
        "final_train_loss": loss * 0.995 if ok else math.nan,
        "final_eval_loss": loss if ok else math.nan,
        "best_eval_loss": loss * 0.999 if ok else math.nan,
        "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "n_layer": n_layer,
        "d_model": d_model, "n_head": n_head, "optimizer": optimizer, "lr": lr,
        "schedule": "cosine", "warmup_steps": min(100, steps // 10), "weight_decay": 0.1,
        "seed": seed, "tokens_per_param": D / N, "compute_budget": compute_budget,
        "group": group, "wall_time_s": C / 5e12, "compile_time_s": 12.0,
        "tokens_per_s": D / max(C / 5e12, 1e-9), "mfu": 0.35, "device_kind": "synthetic",
        "device_count": 1, "jax_version": "synthetic", "corpus_fingerprint": "synthetic",
        "git_commit": "synthetic",
    }


def _write(folder: Path, rows: list[dict], curves: pd.DataFrame | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    df.to_csv(folder / "results.csv", index=False)
    df.to_parquet(folder / "results.parquet", index=False)
    if curves is not None:
        curves.to_parquet(folder / "curves.parquet", index=False)
        curves.to_csv(folder / "curves.csv", index=False)
    return folder


def make_scaling_sweep(
    folder: str | Path,
    *,
    law: dict = TRUE_LAW,
    budgets=(1e16, 3e16, 1e17, 3e17, 1e18),
    sizes_per_budget: int = 7,
    span_decades: float = 1.4,
    noise: float = 0.005,
    curves: bool = True,
    n_evals: int = 30,
    seed: int = 0,
    extra_failed: bool = True,
) -> Path:
    """IsoFLOP sweep from ``law`` with multiplicative log-normal noise ``noise`` on the loss.

    At each budget, ``sizes_per_budget`` sizes log-spaced over +-``span_decades``/2 decades
    around the true optimum (times a random off-centring of up to 0.1 decade). Curves follow
    L(N, t) = law(N, t) for t tokens seen, plus a warm-up transient, with the same noise.
    """
    rng = np.random.default_rng(seed)
    rows, curve_parts = [], []
    sweep = Path(folder).name
    for C in budgets:
        n_opt, _ = true_optimum(C, law)
        centre = math.log10(n_opt) + rng.uniform(-0.1, 0.1)
        for u in np.linspace(centre - span_decades / 2, centre + span_decades / 2, sizes_per_budget):
            N = float(10 ** u)
            D = C / (6 * N)
            loss = float(law_loss(N, D, law) * math.exp(noise * rng.standard_normal()))
            pid = _pid(sweep, C, N)
            rows.append(_row(sweep, pid, "done", N, D, loss, compute_budget=C, group="isoflop"))
            if curves:
                t = np.geomspace(D / 300, D, n_evals)
                clean = law_loss(N, t, law) + 2.0 * np.exp(-t / (D / 200))
                ev = clean * np.exp(noise * rng.standard_normal(t.size))
                ev[-1] = loss
                steps = np.maximum(1, np.round(t / (32 * 256))).astype(int)
                curve_parts.append(pd.DataFrame({
                    "point_id": pid, "step": steps, "tokens": t, "flops": 6 * N * t,
                    "train_loss": ev * (1 + 0.01 * rng.standard_normal(t.size)),
                    "eval_loss": ev, "lr": 3e-3,
                }))
    if extra_failed:
        rows.append(_row(sweep, _pid(sweep, "failed"), "failed", 2e6, 1e9, math.nan, group="isoflop",
                         compute_budget=budgets[0]))
        rows.append(_row(sweep, _pid(sweep, "running"), "running", 3e6, 1e9, math.nan,
                         group="isoflop", compute_budget=budgets[-1]))
    cv = pd.concat(curve_parts, ignore_index=True) if curves else None
    return _write(Path(folder), rows, cv)


OPTIMIZERS = {
    # name: (data efficiency eta: the optimiser acts as if it saw eta * D tokens,
    #        best lr at N = 1e6, best-lr exponent in N)
    "adamw": (1.0, 3e-3, -0.35),
    "lamb": (0.8, 6e-3, -0.30),
    "momentum": (0.5, 0.1, -0.25),
}


def optimizer_loss(N, D, lr, eta, lr0, gamma, law: dict = TRUE_LAW, kappa: float = 0.2):
    """Synthetic loss: law(N, eta D) + kappa (log10 lr / lr*)^2 with lr* = lr0 (N/1e6)^gamma."""
    lr_star = lr0 * (np.asarray(N) / 1e6) ** gamma
    return law_loss(N, eta * np.asarray(D), law) + kappa * np.log10(np.asarray(lr) / lr_star) ** 2


def make_optimizer_sweep(
    folder: str | Path,
    *,
    optimizers: dict = OPTIMIZERS,
    sizes=(1e6, 3e6, 1e7, 3e7, 1e8),
    tokens_per_param: float = 20.0,
    lr_grid_decades: tuple[float, float] = (-1.25, 1.0),
    lr_step: float = 0.25,
    seeds=(0, 1, 2),
    seed_noise: float = 0.005,
    law: dict = TRUE_LAW,
    seed: int = 0,
) -> Path:
    """Learning-rate x size x seed grid for each optimiser (log-spaced lrs around the true
    best lr of each size, off-centre so that the grid is not symmetric); lrs more than
    0.75 decade above the best diverge."""
    rng = np.random.default_rng(seed)
    rows = []
    sweep = Path(folder).name
    for name, (eta, lr0, gamma) in optimizers.items():
        for N in sizes:
            D = tokens_per_param * N
            lr_star = lr0 * (N / 1e6) ** gamma
            base = math.log10(lr0)  # the grid is shared across sizes, as in practice
            for k in np.arange(lr_grid_decades[0], lr_grid_decades[1] + 1e-9, lr_step):
                lr = float(10 ** (base + k))
                for s in seeds:
                    pid = _pid(sweep, name, N, lr, s)
                    if math.log10(lr / lr_star) > 0.75:
                        rows.append(_row(sweep, pid, "diverged", N, D, math.nan, optimizer=name,
                                         lr=lr, seed=s, group="optimizers"))
                        continue
                    loss = float(optimizer_loss(N, D, lr, eta, lr0, gamma, law)
                                 + seed_noise * rng.standard_normal())
                    rows.append(_row(sweep, pid, "done", N, D, loss, optimizer=name, lr=lr,
                                     seed=s, group="optimizers"))
    return _write(Path(folder), rows, None)
