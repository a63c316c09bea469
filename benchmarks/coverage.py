"""Bias and coverage of the IsoFLOP exponent a for each minimum estimator and for ``auto``.

Synthetic IsoFLOP grids are drawn from a known L(N, D) = E + A/N^alpha + B/D^beta (true
a = beta / (alpha + beta)) with multiplicative noise on every loss; the noise-aware
bootstrap is given that noise (as eval_loss_stderr would be). The two designs of issue 25,
on ``analysis.synthetic.ASYMMETRIC_LAW`` (alpha = 2 beta: one decade below the optimum the
loss rises 1.5x as much as one decade above it, as measured profiles are asymmetric) by
default (``--law chinchilla``: Hoffmann et al.'s fit, 1.1x):

- ``sparse``: the demo's kind: 6 budgets sqrt(2) apart, one ladder of sizes 0.15 decade apart,
  each budget the sizes within a factor 4 (0.6 decade) of N, 4 or 5 sizes, the optimum at
  40 % to 60 % of the window (drifting with C, +-0.05 decade at random); 0.1 % noise, so
  that the spread of a (RMS ~0.04) is that of the demo's interval (half-width ~0.07): the
  demo's eval-set error is shared by all its runs and largely cancels in the minima;
- ``dense``: published IsoFLOP studies' kind: 6 budgets over two decades of C, a ladder 0.2
  decade apart, each budget the sizes within two decades of N (10 or 11 sizes), the optimum
  drifting from 25 % to 75 % of the window with C (+-0.05 decade); 0.5 % noise.

The older 7-size grids (issue 11) stay available as kinds: ``centred`` (2 decades centred on
the optimum), ``off-centre`` (the optimum at the 2nd size), ``wide`` (3 decades),
``drifting`` (one ladder for all budgets, the optimum moving from the 2nd to the 6th size)
and ``jittered`` (1.4 decades, each budget shifted by up to 0.1 decade), on TRUE_LAW.

For each grid and estimator, over ``--draws`` random draws (fixed seeds): the mean error of a
(bias) with its standard error, its RMS, the share of draws whose 95 % interval covers the
truth, the median interval width and the mean number of failed bootstrap replicates; for
``auto`` also how often it chose each estimator.

    python benchmarks/coverage.py [--kinds sparse dense] [--law asymmetric] [--draws 100] [--n-boot 200]
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

from analysis.fits.isoflop import fit_isoflop  # noqa: E402
from analysis.fits.isoflop_minima import ESTIMATORS  # noqa: E402
from analysis.synthetic import (ASYMMETRIC_LAW, TRUE_LAW, law_loss, profile_asymmetry,  # noqa: E402
                                true_exponent, true_optimum)

TRUE_A = true_exponent(TRUE_LAW)
LAWS = {"asymmetric": ASYMMETRIC_LAW, "chinchilla": TRUE_LAW}
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)
# issue 25's two designs: (budgets, ladder step, window in decades of N, optimum's position in
# the window at the smallest and the largest budget, noise)
DESIGNS = {
    "sparse": (tuple(1.13e17 * math.sqrt(2) ** np.arange(6)), 0.15, 0.6, (0.4, 0.6), 0.001),
    "dense": (tuple(np.geomspace(1e17, 1e19, 6)), 0.2, 2.0, (0.25, 0.75), 0.005),
}
ESTIMATES = ESTIMATORS + ("auto",)
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


def design_grid(kind: str, rng: np.random.Generator, law: dict = ASYMMETRIC_LAW, noise: float | None = None):
    """Rows (C, N, D, loss, stderr) of one draw of issue 25's ``sparse`` or ``dense`` design."""
    budgets, step, window, (p0, p1), default_noise = DESIGNS[kind]
    noise = default_noise if noise is None else noise
    rows = []
    for C, p in zip(budgets, np.linspace(p0, p1, len(budgets))):
        lo = math.log10(true_optimum(C, law)[0]) - p * window + rng.uniform(-0.05, 0.05)
        ladder = step * np.arange(math.floor(lo / step), math.ceil((lo + window) / step) + 1)
        u = ladder[(ladder >= lo - 1e-9) & (ladder <= lo + window + 1e-9)]
        N = 10 ** u
        D = C / (6 * N)
        L = law_loss(N, D, law) * np.exp(noise * rng.standard_normal(u.size))
        rows += [(C, n, d, l, noise * l) for n, d, l in zip(N, D, L)]
    return tuple(map(np.array, zip(*rows)))


def isoflop_grid(kind: str, rng: np.random.Generator, noise: float = 0.005, n_sizes: int = 7,
                 law: dict = TRUE_LAW):
    """Rows (C, N, D, loss, stderr) of one synthetic IsoFLOP design of kind ``kind`` (issue 25's
    designs: :func:`design_grid`, on ``law``)."""
    if kind in DESIGNS:
        return design_grid(kind, rng, law)
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


def run(kind: str, draws: int, n_boot: int, seed0: int = 1000, law: dict | None = None):
    """Per estimator and "auto": list of (a, lo, hi, failed, chosen estimator) over the draws."""
    law = (ASYMMETRIC_LAW if kind in DESIGNS else TRUE_LAW) if law is None else law
    res = {e: [] for e in ESTIMATES}
    for i in range(draws):
        rng = np.random.default_rng(seed0 + i)
        C, N, D, L, se = isoflop_grid(kind, rng, law=law)
        fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=n_boot, seed=i, estimator="auto")
        for e, d in fit.estimators.items():
            lo, hi = d["ci"].get("a", (math.nan, math.nan))
            res[e].append((d["a"], lo, hi, d["n_boot_failed"], e))
        lo, hi = fit.interval("a") if n_boot > 0 else (math.nan, math.nan)
        res["auto"].append((fit.params["a"], lo, hi, fit.info["n_boot_failed"], fit.info["estimator"]))
    return res


def summary(res: dict, true_a: float) -> dict:
    """Per estimate: bias, its standard error, RMS, coverage, median width, failed, choices."""
    out = {}
    for e, rows in res.items():
        r = np.array([t[:4] for t in rows], dtype=float)
        err = r[:, 0] - true_a
        fin = np.isfinite(err)
        out[e] = {"bias": float(np.mean(err[fin])), "se": float(np.std(err[fin]) / math.sqrt(max(fin.sum(), 1))),
                  "rms": float(math.sqrt(np.mean(err[fin] ** 2))),
                  "coverage": float(np.mean((r[:, 1] <= true_a) & (true_a <= r[:, 2]))),
                  "width": float(np.nanmedian(r[:, 2] - r[:, 1])) if np.isfinite(r[:, 1]).any() else math.nan,
                  "failed": float(r[:, 3].mean()),
                  "n_nan": int((~fin).sum()),
                  "chosen": {k: sum(t[4] == k for t in rows) for k in ESTIMATORS if any(t[4] == k for t in rows)}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=list(DESIGNS), choices=list(DESIGNS) + list(GRIDS))
    ap.add_argument("--law", choices=list(LAWS), default=None,
                    help="sparse/dense default: asymmetric; the 7-size grids: chinchilla")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    print(f"# IsoFLOP exponent a: {args.draws} draws per grid, {args.n_boot} noise-bootstrap replicates; "
          "auto = the default estimator (analysis/fits/isoflop_choice.py)\n")
    print("| grid | law (a; asymmetry) | estimator | bias (± se) | RMS error | coverage of 95 % CI | "
          "median CI width | mean failed replicates | auto chose |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    for kind in args.kinds:
        lname = args.law or ("asymmetric" if kind in DESIGNS else "chinchilla")
        law = LAWS[lname]
        ta = true_exponent(law)
        S = summary(run(kind, args.draws, args.n_boot, law=law), ta)
        for e in ESTIMATES:
            d = S[e]
            ch = ", ".join(f"{k} {v}" for k, v in d["chosen"].items()) if e == "auto" else ""
            print(f"| {kind} | {lname} ({ta:.4f}; {profile_asymmetry(law):.2f}x) | {e} | {d['bias']:+.4f} "
                  f"(± {d['se']:.4f}) | {d['rms']:.4f} | {d['coverage'] * 100:.0f} % | {d['width']:.4f} | "
                  f"{d['failed']:.1f} | {ch} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
