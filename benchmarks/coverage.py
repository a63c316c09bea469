"""Bias and coverage of the IsoFLOP exponent a for each minimum estimator (issue 11).

Synthetic IsoFLOP grids are drawn from a known L(N, D) = E + A/N^alpha + B/D^beta
(``analysis.synthetic.TRUE_LAW``, true a = beta / (alpha + beta)) with multiplicative 0.5 %
noise on every loss; the noise-aware bootstrap is given that noise (as eval_loss_stderr would
be). Grids, 7 sizes per budget over 5 budgets (1e17 .. 1e19 FLOPs):

- ``centred``: 2 decades of N centred on the true optimum;
- ``off-centre``: the same span with the optimum at the 2nd of the 7 sizes;
- ``wide``: 3 decades of N centred on the optimum;
- ``jittered``: analysis.synthetic.make_scaling_sweep's design, 1.4 decades around the
  optimum with each budget shifted by a random offset of up to 0.1 decade;
- ``drifting``: one ladder of sizes for all budgets, so that the optimum moves from the 2nd
  size (smallest budget) to the 6th (largest): the global parabola's bias then changes with C
  and does not cancel in the slope.

For each grid and estimator, over ``--draws`` random draws (fixed seeds): the mean error of a
(bias), its RMS, the largest error, the share of draws whose 95 % interval covers the truth,
the share of draws within 0.02 of the truth, the median interval width and the mean number
of failed bootstrap replicates.

    python benchmarks/coverage.py [--draws 50] [--n-boot 200]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.isoflop import DEFAULT_ESTIMATOR, ESTIMATORS, fit_isoflop  # noqa: E402
from analysis.synthetic import TRUE_LAW, law_loss, true_optimum  # noqa: E402

TRUE_A = TRUE_LAW["beta"] / (TRUE_LAW["alpha"] + TRUE_LAW["beta"])
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)
GRIDS = {
    # name: (span in decades, index of the size nearest the optimum among 7)
    "centred": (2.0, 3),
    "off-centre": (2.0, 1),
    "wide": (3.0, 3),
    # one ladder of sizes for every budget (as real sweeps do): the optimum drifts from the
    # 2nd size at the smallest budget to the 6th at the largest
    "drifting": (2.0, None),
    # analysis.synthetic.make_scaling_sweep's design: 1.4 decades around the optimum, each
    # budget's grid shifted by a random offset of up to +-0.1 decade
    "jittered": (1.4, "jitter"),
}


def isoflop_grid(kind: str, rng: np.random.Generator, noise: float = 0.005, n_sizes: int = 7):
    """Rows (C, N, D, loss, stderr) of one synthetic IsoFLOP design of kind ``kind``."""
    span, at = GRIDS[kind]
    step = span / (n_sizes - 1)
    rows = []
    lo_opt = math.log10(true_optimum(BUDGETS[0])[0])
    hi_opt = math.log10(true_optimum(BUDGETS[-1])[0])
    for C in BUDGETS:
        n_opt, _ = true_optimum(C)
        if at == "jitter":
            centre = math.log10(n_opt) + rng.uniform(-0.1, 0.1)
            u = centre - span / 2 + step * np.arange(n_sizes)
        elif at is None:  # ladder: the 2nd size at the smallest budget's optimum, the 6th at the largest
            step = (hi_opt - lo_opt) / 4
            u = lo_opt - step + step * np.arange(n_sizes)
        else:
            u = math.log10(n_opt) - at * step + step * np.arange(n_sizes)
        N = 10 ** u
        D = C / (6 * N)
        L = law_loss(N, D) * np.exp(noise * rng.standard_normal(n_sizes))
        rows += [(C, n, d, l, noise * l) for n, d, l in zip(N, D, L)]
    return tuple(map(np.array, zip(*rows)))


def run(kind: str, draws: int, n_boot: int, seed0: int = 1000):
    """Per estimator: list of (a, lo, hi, failed) over the draws."""
    res = {e: [] for e in ESTIMATORS}
    for i in range(draws):
        rng = np.random.default_rng(seed0 + i)
        C, N, D, L, se = isoflop_grid(kind, rng)
        fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=n_boot, seed=i)
        for e, d in fit.estimators.items():
            lo, hi = d["ci"]["a"]
            res[e].append((d["a"], lo, hi, d["n_boot_failed"]))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    print(f"# IsoFLOP exponent: true a = {TRUE_A:.4f}; {args.draws} draws per grid, "
          f"{args.n_boot} noise-bootstrap replicates, 0.5 % noise; default estimator: {DEFAULT_ESTIMATOR}\n")
    print("| grid | estimator | bias | RMS error | max abs error | within 0.02 | coverage of 95 % CI | "
          "median CI width | mean failed replicates |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    for kind in GRIDS:
        res = run(kind, args.draws, args.n_boot)
        for e in ESTIMATORS:
            r = np.array(res[e], dtype=float)
            err = r[:, 0] - TRUE_A
            cov = np.mean((r[:, 1] <= TRUE_A) & (TRUE_A <= r[:, 2]))
            print(f"| {kind} | {e}{' (default)' if e == DEFAULT_ESTIMATOR else ''} | {err.mean():+.4f} | "
                  f"{math.sqrt(np.mean(err ** 2)):.4f} | {np.abs(err).max():.4f} | "
                  f"{np.mean(np.abs(err) <= 0.02) * 100:.0f} % | {cov * 100:.0f} % | "
                  f"{np.median(r[:, 2] - r[:, 1]):.4f} | {r[:, 3].mean():.1f} |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
