"""Do the laws of L(N, D) extrapolate, and do their prediction intervals cover?

1. Public data: the 240 Chinchilla runs extracted by Epoch AI (tests/data/chinchilla, five
   highest losses dropped as Besiroglu et al. do; D = C / (6 N)). Every law is fitted to the
   runs below ``--cut`` FLOPs (default 1e21) and predicts the rest (analysis/fits/backtest.py):
   mean and largest |relative error| and coverage of the 95 % prediction interval, per law.
   Case bootstrap (the rows are not a designed sweep and carry no measured noise).
2. Synthetic data with a known law (Hoffmann et al.'s published fit, analysis/synthetic.py's
   TRUE_LAW) and known noise: an IsoFLOP design of 5 budgets 1e17..1e19 FLOPs x 6 sizes over
   +-0.7 decades around each optimum, 0.5 % log-normal noise on every loss; the Chinchilla law
   with the noise bootstrap predicts runs at 10x and 100x the largest budget (the compute-optimal
   N and N x/÷ 3 at each), each observed with the same noise. Coverage of the 95 % prediction
   interval over ``--draws`` draws (target >= 90 %), with the parameter-only interval's coverage
   beside it (what the bootstrap alone would claim). The draws' fits use a coarser start grid
   (972 starts: a, b in {0..25}, e in {-1, 0, 1}, alpha, beta in {0.25, 0.5, 1}) to keep the
   benchmark affordable; the Epoch fits use Hoffmann's 4,500.
3. ``--time``: the seconds of one chinchilla fit with its bootstrap and of ``--law auto`` on
   the Epoch rows (issue 26: auto within 3x).

    python benchmarks/extrapolation.py [--draws 100] [--n-boot 100] [--cut 1e21] [--time]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.fits.backtest import run_backtest, summary_table  # noqa: E402
from analysis.fits.chinchilla import fit_approach3  # noqa: E402
from analysis.fits.multistart import grid  # noqa: E402
from analysis.report.tables import to_markdown  # noqa: E402
from analysis.synthetic import TRUE_LAW, law_loss, true_optimum  # noqa: E402

DATA = ROOT / "tests" / "data" / "chinchilla" / "svg_extracted_data.csv"
COARSE = grid(np.arange(0.0, 25.1, 5.0), np.arange(0.0, 25.1, 5.0), [-1.0, 0.0, 1.0],
              [0.25, 0.5, 1.0], [0.25, 0.5, 1.0])
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)


def epoch_rows() -> pd.DataFrame:
    df = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy(float)
    C = df["Training FLOP"].to_numpy(float)
    return pd.DataFrame({"N": N, "D": C / (6 * N), "C": C, "loss": df["loss"].to_numpy(float)})


def epoch_backtest(cut: float, n_boot: int, seed: int = 0) -> dict:
    return run_backtest(epoch_rows(), fit_below_C=cut, n_boot=n_boot, seed=seed, bootstrap="cases")


def synthetic_design(rng, noise: float = 0.005, law=TRUE_LAW, budgets=BUDGETS, sizes: int = 6):
    N, D = [], []
    for C in budgets:
        n_opt, _ = true_optimum(C, law)
        for u in np.linspace(-0.7, 0.7, sizes) + np.log10(n_opt) + rng.uniform(-0.1, 0.1):
            N.append(10 ** u)
            D.append(C / (6 * 10 ** u))
    N, D = np.array(N), np.array(D)
    L = law_loss(N, D, law) * np.exp(noise * rng.standard_normal(N.size))
    return N, D, L


def synthetic_targets(law=TRUE_LAW, cmax: float = BUDGETS[-1], multiples=(10, 100)):
    rows = []
    for m in multiples:
        n_opt, _ = true_optimum(m * cmax, law)
        for f in (1 / 3, 1.0, 3.0):
            N = n_opt * f
            rows.append((m, f, N, m * cmax / (6 * N)))
    return rows


def synthetic_draw(seed: int, n_boot: int, noise: float = 0.005, starts=COARSE, law=TRUE_LAW):
    """One draw: fit, predict the targets, observe them; rows (multiple, inside, param_inside,
    rel_error, misspec_sd)."""
    rng = np.random.default_rng(seed)
    N, D, L = synthetic_design(rng, noise, law)
    fit = fit_approach3(N, D, L, n_boot=n_boot, seed=seed, bootstrap="noise", noise=noise * L,
                        starts=starts)
    tg = synthetic_targets(law)
    tN = np.array([t[2] for t in tg])
    tD = np.array([t[3] for t in tg])
    p = fit.predict_loss(tN, tD)
    obs = law_loss(tN, tD, law) * np.exp(noise * rng.standard_normal(tN.size))
    out = []
    for i, t in enumerate(tg):
        out.append({"multiple": t[0], "N_factor": t[1], "inside": bool(p.low[i] <= obs[i] <= p.high[i]),
                    "param_inside": bool(p.param_low[i] <= obs[i] <= p.param_high[i]),
                    "rel_error": float(p.loss[i] / obs[i] - 1), "misspec_sd": float(p.misspec_sd[i]),
                    "half_width": float(np.log(p.high[i] / p.low[i]) / 2)})
    return out


def synthetic_coverage(draws: int, n_boot: int, seed0: int = 1000, **kw) -> pd.DataFrame:
    rows = []
    for s in range(draws):
        for r in synthetic_draw(seed0 + s, n_boot, **kw):
            rows.append({"draw": s, **r})
    return pd.DataFrame(rows)


def coverage_table(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("multiple")
    return pd.DataFrame({
        "beyond largest C": [f"{m}x" for m in g.groups],
        "predictions": g.size().to_numpy(),
        "coverage (95% PI)": g["inside"].mean().to_numpy(),
        "coverage (bootstrap only)": g["param_inside"].mean().to_numpy(),
        "mean abs. rel. error": g["rel_error"].apply(lambda v: np.mean(np.abs(v))).to_numpy(),
        "median half-width (log)": g["half_width"].median().to_numpy(),
    })


def timing(n_boot: int = 200) -> dict:
    from analysis.fits.ndlaws import fit_auto

    d = epoch_rows()
    t0 = time.perf_counter()
    fit_approach3(d["N"], d["D"], d["loss"], C=d["C"], n_boot=n_boot, bootstrap="cases")
    t1 = time.perf_counter()
    fit_auto(d["N"], d["D"], d["loss"], C=d["C"], n_boot=n_boot, bootstrap="cases")
    t2 = time.perf_counter()
    return {"chinchilla_s": t1 - t0, "auto_s": t2 - t1, "ratio": (t2 - t1) / (t1 - t0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--cut", type=float, default=1e21)
    ap.add_argument("--skip-epoch", action="store_true")
    ap.add_argument("--time", action="store_true")
    args = ap.parse_args()
    out = {}
    if not args.skip_epoch:
        t0 = time.perf_counter()
        res = epoch_backtest(args.cut, args.n_boot)
        print(f"## Epoch's Chinchilla rows: {res['rule']} ({res['n_fit']} fitted, "
              f"{res['n_held_out']} predicted; case bootstrap, {args.n_boot} replicates; "
              f"{time.perf_counter() - t0:.0f} s)\n")
        print(to_markdown(summary_table(res).drop(columns=["form"])))
        out["epoch"] = {n: {k: r.get(k) for k in ("mean_abs_rel_error", "max_abs_rel_error", "coverage", "n")}
                        for n, r in res["laws"].items()}
        print()
    if args.draws > 0:
        t0 = time.perf_counter()
        cov = synthetic_coverage(args.draws, args.n_boot)
        tab = coverage_table(cov)
        print(f"## Synthetic (known Chinchilla law, 0.5 % noise): {args.draws} draws, "
              f"{args.n_boot} bootstrap replicates each ({time.perf_counter() - t0:.0f} s)\n")
        print(to_markdown(tab, digits=3))
        out["synthetic"] = {r["beyond largest C"]: {"coverage": r["coverage (95% PI)"],
                                                    "coverage_bootstrap_only": r["coverage (bootstrap only)"]}
                            for r in tab.to_dict("records")}
        print()
    if args.time:
        out["timing"] = timing()
        print(f"## Timing (Epoch rows, 200 replicates): chinchilla {out['timing']['chinchilla_s']:.1f} s, "
              f"auto {out['timing']['auto_s']:.1f} s ({out['timing']['ratio']:.2f}x)\n")
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
