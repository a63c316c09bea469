"""Speed of Chinchilla Approach 3 on the 240 Chinchilla runs (Epoch AI's extraction).

Times the full fit (Hoffmann et al.'s 4,500 starts) plus bootstrap refits, as
``analysis.fits.chinchilla.fit_approach3`` does them (batched numpy L-BFGS; bootstrap refits
start from the full-data optimum and the starts of the best distinct basins). Also:

- ``--verify K``: refits K bootstrap resamples from all 4,500 starts and compares with the
  reduced-start refits (same optimum?);
- ``--naive K``: times K single-start ``scipy.optimize.minimize`` calls and extrapolates to
  a loop over 4,500 starts plus the bootstrap.

    python benchmarks/fit_speed.py [--n-boot 200] [--repeat 2] [--verify 3] [--naive 20]

Target (issue): at most 30 s on 2 CPU cores for 4,500 starts + 200 bootstrap refits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.fits.chinchilla import FTOL, fit_approach3, hoffmann_starts  # noqa: E402
from analysis.fits.laws import ChinchillaLaw  # noqa: E402
from analysis.fits.multistart import fit_multistart  # noqa: E402
from analysis.result import bootstrap_counts  # noqa: E402

DATA = ROOT / "tests" / "data" / "chinchilla" / "svg_extracted_data.csv"


def load():
    df = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy(float)
    C = df["Training FLOP"].to_numpy(float)
    return N, C / (6 * N), df["loss"].to_numpy(float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--verify", type=int, default=3, help="resamples refitted from all starts")
    ap.add_argument("--naive", type=int, default=20, help="single scipy calls to time (0: skip)")
    args = ap.parse_args()
    N, D, L = load()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    print(f"# Chinchilla Approach 3 speed: {len(N)} rows, {len(hoffmann_starts())} starts, "
          f"{args.n_boot} bootstrap refits; {cores} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print()
    print("| run | full grid fit (s) | bootstrap (s) | total (s) |")
    print("|---|---|---|---|")
    totals = []
    fit = None
    for r in range(args.repeat):
        t0 = time.perf_counter()
        fit0 = fit_approach3(N, D, L, n_boot=0)
        t1 = time.perf_counter()
        fit = fit_approach3(N, D, L, n_boot=args.n_boot, bootstrap="cases")  # Epoch: case resampling
        t2 = time.perf_counter()
        # fit_approach3 with n_boot repeats the grid fit: bootstrap time = difference
        boot = (t2 - t1) - (t1 - t0)
        totals.append(t2 - t1)
        print(f"| {r + 1} | {t1 - t0:.1f} | {boot:.1f} | {t2 - t1:.1f} |")
    print()
    print(f"best total: {min(totals):.1f} s (target <= 30 s)")
    p = fit.params
    print()
    print("| parameter | estimate | 95% CI |")
    print("|---|---|---|")
    for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = fit.interval(k)
        print(f"| {k} | {p[k]:.4g} | [{lo:.4g}, {hi:.4g}] |")
    print(f"\nstarts reaching the best objective: {fit0.info['starts_at_best']} of {fit0.info['n_starts']};"
          f" bootstrap starts per resample: {fit.info.get('n_boot_starts')}")

    if args.verify > 0:
        print(f"\n## Verification: {args.verify} bootstrap resamples refitted from all 4,500 starts")
        rng = np.random.default_rng(0)  # same stream as fit_approach3(seed=0)
        W = bootstrap_counts(len(N), args.n_boot, rng)[: args.verify]
        law = ChinchillaLaw(np.log(N), np.log(D))
        y = np.log(L)
        t0 = time.perf_counter()
        full = fit_multistart(law, y, law.to_internal(hoffmann_starts()), weights=W,
                              n_problems=args.verify, ftol=FTOL, max_iter=1000)
        dt = time.perf_counter() - t0
        print(f"(took {dt:.1f} s)\n")
        print("| resample | a (reduced starts) | a (all starts) | relative objective difference |")
        print("|---|---|---|---|")
        worst = 0.0
        S = fit.samples
        for i in range(args.verify):
            e = law.to_external(full.x[i])[0]
            a_full = e[4] / (e[3] + e[4])
            # objective of the reduced-start optimum on this resample
            from analysis.fits.multistart import make_objective

            fg = make_objective(law, y, weights=W[i])
            red = law.to_internal(np.array([[np.log(S["A"][i]), np.log(S["B"][i]), np.log(S["E"][i]),
                                             S["alpha"][i], S["beta"][i]]]))
            f_red = fg(red, np.array([0]))[0][0]
            rel = (f_red - full.f[i]) / abs(full.f[i])
            worst = max(worst, rel)
            print(f"| {i} | {S['a'][i]:.5f} | {a_full:.5f} | {rel:+.2e} |")
        print(f"\nlargest relative excess of the reduced-start objective: {worst:+.2e} "
              "(<= 0 or ~1e-9: the same optimum)")

    if args.naive > 0:
        from scipy.optimize import minimize
        from scipy.special import huber, logsumexp

        lN, lD, y = np.log(N), np.log(D), np.log(L)

        def obj(q):
            a, b, e, al, be = q
            pred = logsumexp([a - al * lN, b - be * lD, np.full_like(lN, e)], axis=0)
            return huber(1e-3, pred - y).sum()

        starts = hoffmann_starts()[np.random.default_rng(1).choice(4500, args.naive, replace=False)]
        t0 = time.perf_counter()
        for s in starts:
            minimize(obj, s, method="L-BFGS-B")
        per = (time.perf_counter() - t0) / args.naive
        est = per * (4500 + args.n_boot * 10)
        print(f"\n## Naive loop\n\nscipy L-BFGS-B (finite-difference gradients), one start per call: {per * 1e3:.0f} ms per start; "
              f"4,500 starts + {args.n_boot} x 10 bootstrap starts would take about {est:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
