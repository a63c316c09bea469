"""Synthetic batch-size sweeps with a KNOWN critical batch size, for tests and examples.

At batch B (tokens) and learning rate lr a run needs S(L) = f(lr) S_min(L) (1 + B_noise(L) / B)
steps to reach loss L (McCandlish et al. 2018), so S_min(L) and E_min(L) = S_min(L) B_noise(L)
are known and B_crit(L) = B_noise(L). Here

    S_min(L)   = (A / (L - L_inf))^(1 / a)          the ideal (infinite-batch) learning curve
    B_noise(L) = B_star / L^(1 / alpha_B)           Kaplan et al. 2020's B_crit(L)
    f(lr)      = 1 + c ln(lr / lr_opt(B))^2         lr_opt(B) = lr0 sqrt(B / B0)

and each run has its own speed factor exp(N(0, speed_sd)) (seed-to-seed variation). Every run
trains the same number of tokens, so the largest batches (least token-efficient) stop at
higher losses: their low targets are censored. Evaluations are log-spaced in step; each eval
loss carries N(0, noise_sd) noise (the eval set's sampling error). Written as a sweep folder
(results.csv, curves.parquet; analysis/load.py reads it) by :func:`write_batch_sweep`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

TRUE = {"L_inf": 2.0, "A": 60.0, "a": 0.5, "B_star": 2e6, "alpha_B": 0.21}
SEQ_LEN = 64


def s_min(L, p: dict = TRUE):
    return (p["A"] / (np.asarray(L, dtype=float) - p["L_inf"])) ** (1 / p["a"])


def b_crit(L, p: dict = TRUE):
    return p["B_star"] / np.asarray(L, dtype=float) ** (1 / p["alpha_B"])


def e_min(L, p: dict = TRUE):
    return s_min(L, p) * b_crit(L, p)


def make_batch_tables(*, batch_sizes=(32, 64, 128, 256, 512, 1024, 2048), seq_len: int = SEQ_LEN,
                      lr_factors=(0.5, 1.0, 2.0), fixed_lrs=None, seeds=(0,), tokens: float = 2e9,
                      noise_sd: float = 0.004, speed_sd: float = 0.03, n_evals: int = 40,
                      optimizers=("adamw",), params: dict = TRUE, perfect: bool = False,
                      b_simple: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves) of a synthetic sweep. ``batch_sizes`` in sequences (B = batch_size x
    seq_len tokens); lrs: lr_opt(B) x ``lr_factors``, or ``fixed_lrs`` for every batch size;
    ``perfect``: S = E_min / B (no curvature: B_crit infinite)."""
    rng = np.random.default_rng(seed)
    Lgrid = np.linspace(params["L_inf"] + 0.05, 8.0, 4000)
    rows, curves = [], []
    for opt in optimizers:
        for bs in batch_sizes:
            B = bs * seq_len
            lr_opt = 1e-3 * np.sqrt(B / 2048)
            lrs = fixed_lrs if fixed_lrs is not None else [lr_opt * k for k in lr_factors]
            for lr in lrs:
                for sd in seeds:
                    f = (1 + 0.3 * np.log(lr / lr_opt) ** 2) * np.exp(rng.normal(0, speed_sd))
                    if perfect:
                        S_of_L = f * e_min(Lgrid, params) / B
                    else:
                        S_of_L = f * s_min(Lgrid, params) * (1 + b_crit(Lgrid, params) / B)
                    T = int(tokens // B)
                    steps = np.unique(np.round(np.geomspace(max(T / 2000, 2), T, n_evals)).astype(int))
                    # S_of_L decreases with L: the loss at step s by interpolation in log S
                    L_of_s = np.interp(np.log(steps), np.log(S_of_L[::-1]), Lgrid[::-1])
                    ev = L_of_s + rng.normal(0, noise_sd, len(steps))
                    pid = hashlib.sha1(f"{opt}|{bs}|{lr}|{sd}".encode()).hexdigest()[:12]
                    curves.append(pd.DataFrame({
                        "point_id": pid, "step": steps, "tokens": steps * B, "flops": 6e6 * steps * B,
                        "train_loss": L_of_s + rng.normal(0, 3 * noise_sd, len(steps)),
                        "eval_loss": ev, "eval_loss_stderr": noise_sd, "lr": lr}))
                    row = {"sweep": "batch", "point_id": pid, "status": "done", "optimizer": opt,
                           "batch_size": bs, "seq_len": seq_len, "lr": lr, "seed": sd, "N": 1e6,
                           "D": float(T * B), "C": 6e6 * T * B, "steps": T,
                           "final_eval_loss": float(ev[-1]), "final_train_loss": float(L_of_s[-1])}
                    if b_simple:
                        row["noise_scale_b_simple"] = float(b_crit(L_of_s[-1], params)
                                                            * np.exp(rng.normal(0, 0.1)))
                    rows.append(row)
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def write_batch_sweep(folder, **kw) -> Path:
    """:func:`make_batch_tables` written as a sweep folder; returns it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    res, cv = make_batch_tables(**kw)
    res.to_csv(out / "results.csv", index=False)
    cv.to_parquet(out / "curves.parquet", index=False)
    return out
