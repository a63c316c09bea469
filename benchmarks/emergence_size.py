"""Size and power of the tests of "exact match = the product of per-position accuracies".

Simulated task evals (scaling/train/taskstats.py): n instances of an L-token answer, each position
right with probability p independently (the null), or -- the dependent alternative -- each
instance failing as a whole with probability `fail` (a latent "gets the answer wrong" event)
and otherwise right at each position with probability p / (1 - fail), so that the
per-position accuracy is p under both. Over `--reps` simulated datasets per cell, the share
rejected at the 5 % level by:

- `perm`: the permutation test (`taskstats.permutation_p`), the one analysis/emergence.py uses;
- `boot_z`: the paired bootstrap's normal-approximation p-value (`positions_p`);
- `boot_pct`: the paired bootstrap's percentile p-value (`positions_p_percentile`);
- `old_z`: the earlier test, z = (EM - prod p_j) / sqrt(se_EM^2 + se_prod^2), se_EM binomial
  at (x + 1) / (n + 2) and se_prod the bootstrap sd of prod p_j alone (its mean z^2 too,
  which is 1 for a calibrated z).

Size columns are under the null, power columns under the alternative. Binomial error of a
share s over R datasets: sqrt(s (1 - s) / R) (0.005 at s = 0.05, R = 2000). p-values carry
Monte-Carlo error from `--n-perm` / `--n-boot` replicates (fixed seeds: reruns agree).

    python benchmarks/emergence_size.py [--reps 2000] [--n 200] [--fail 0.03] [--n-perm 200]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from scaling.train.taskstats import paired_excess, permutation_p

CELLS = [(0.3, 5), (0.5, 3), (0.5, 5), (0.8, 3), (0.8, 5), (0.95, 3), (0.95, 5)]


def simulate(rng, n: int, L: int, p: float, fail: float = 0.0) -> np.ndarray:
    whole = rng.random(n) < fail
    return (rng.random((n, L)) < p / (1 - fail)) & ~whole[:, None]


def rejections(hit, L: int, seed: int, n_perm: int, n_boot: int) -> tuple[dict, float]:
    n = len(hit)
    lens = np.full(n, L)
    pe = paired_excess(hit, lens, n_boot=n_boot, seed=seed)
    em = pe["em"]
    pt = (em * n + 1) / (n + 2)
    z_old = pe["positions"] / math.sqrt(pt * (1 - pt) / n + pe["prod_se"] ** 2)
    rej = {"perm": permutation_p(hit, lens, n_perm=n_perm, seed=seed) < 0.05,
           "boot_z": pe["positions_p"] < 0.05,  # NaN (nothing varies) counts as no rejection
           "boot_pct": pe["positions_p_percentile"] < 0.05,
           "old_z": abs(z_old) > 1.959964}
    return rej, z_old ** 2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--fail", type=float, default=0.03)
    ap.add_argument("--n-perm", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=200)
    a = ap.parse_args(argv)
    t0 = time.time()
    keys = ("perm", "boot_z", "boot_pct", "old_z")
    print(f"n = {a.n} instances, {a.reps} datasets per cell, 5 % level; alternative: "
          f"{a.fail:.0%} of instances fail as a whole")
    head = ("| p | L | n | " + " | ".join(f"size {k}" for k in keys) + " | mean z² old | "
            + " | ".join(f"power {k}" for k in keys) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for p, L in CELLS:
        rng = np.random.default_rng([int(p * 100), L, a.n])
        size, z2, power = {k: 0 for k in keys}, 0.0, {k: 0 for k in keys}
        for r in range(a.reps):
            rej, zz = rejections(simulate(rng, a.n, L, p), L, r, a.n_perm, a.n_boot)
            z2 += zz
            for k in keys:
                size[k] += rej[k]
            rej, _ = rejections(simulate(rng, a.n, L, p, a.fail), L, r, a.n_perm, a.n_boot)
            for k in keys:
                power[k] += rej[k]
        print(f"| {p} | {L} | {a.n} | " + " | ".join(f"{size[k] / a.reps:.3f}" for k in keys)
              + f" | {z2 / a.reps:.2f} | " + " | ".join(f"{power[k] / a.reps:.3f}" for k in keys)
              + " |", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
