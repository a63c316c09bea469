"""Does the law extrapolate? Fit each law of L(N, D) on the cheaper runs, predict the held-out
most expensive ones, and score the predictions.

    python -m analysis backtest TABLE [--holdout-top 0.25 | --fit-below-N N | --fit-below-C C]

Split rules (:func:`split`): ``holdout_top`` (default 0.25) holds out the most expensive share
of the rows by compute, cut between compute levels (an IsoFLOP budget is never split; at least
one level is held out); ``fit_below_N`` fits the runs with N below the value; ``fit_below_C``
the runs with C below the value. Each law is fitted to the training rows alone, from its full
grid of starts, with its own bootstrap and its own misspecification (the rolling backtest of
analysis/fits/prediction.py inside the training rows): nothing of the held-out rows enters the fit.

Per held-out run: predicted loss, its 95 % prediction interval, the relative error
(predicted / observed - 1) and whether the observed loss is inside the interval; per law: the
mean |relative error|, the largest, and the coverage (inside / held out).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.ndlaws import FORMS, ND_LAWS, fit_law
from analysis.fits.prediction import compute_levels
from analysis.result import LEVEL


def split(df: pd.DataFrame, *, holdout_top: float | None = None, fit_below_N: float | None = None,
          fit_below_C: float | None = None) -> tuple[np.ndarray, str]:
    """(training mask, the rule in words); see the module docstring."""
    given = [v is not None for v in (holdout_top, fit_below_N, fit_below_C)]
    if sum(given) > 1:
        raise ValueError("give one of holdout_top, fit_below_N, fit_below_C")
    if fit_below_N is not None:
        m = df["N"].to_numpy(float) < fit_below_N
        rule = f"fit on N < {fit_below_N:.3g}, predict N >= {fit_below_N:.3g}"
    elif fit_below_C is not None:
        m = df["C"].to_numpy(float) < fit_below_C
        rule = f"fit on C < {fit_below_C:.3g} FLOPs, predict C >= {fit_below_C:.3g}"
    else:
        q = 0.25 if holdout_top is None else float(holdout_top)
        if not 0 < q < 1:
            raise ValueError(f"--holdout-top must be in (0, 1), got {q}")
        lev = compute_levels(df["C"].to_numpy(float))
        n = lev.size
        k = lev.max()  # hold out levels >= k: the most levels whose rows are <= q of all
        while k - 1 >= 1 and (lev >= k - 1).sum() <= q * n + 1e-9:
            k -= 1
        m = lev < k
        rule = (f"hold out the most expensive {(~m).sum()} of {n} rows (top {q:.0%} by compute, "
                f"cut between compute levels): C >= {df['C'].to_numpy(float)[~m].min():.3g} FLOPs")
    if m.sum() < 6 or (~m).sum() < 1:
        raise ValueError(f"backtest split leaves {int(m.sum())} rows to fit and {int((~m).sum())} "
                         "to predict (need >= 6 and >= 1)")
    return m, rule


def run_backtest(df: pd.DataFrame, *, laws=ND_LAWS, holdout_top=None, fit_below_N=None,
                 fit_below_C=None, n_boot: int = 100, seed: int = 0, bootstrap: str = "noise",
                 noise=None, level: float = LEVEL, U=None, loss_fn: str = "huber") -> dict:
    """Backtest every law in ``laws`` on ``df`` (columns N, D, C, loss). ``noise``: per-row
    absolute loss noise (or None: each fit's residual scale); ``U``: unique tokens per row."""
    df = df.reset_index(drop=True)
    m, rule = split(df, holdout_top=holdout_top, fit_below_N=fit_below_N, fit_below_C=fit_below_C)
    tr, ho = df[m], df[~m]
    sig = None if noise is None else np.asarray(noise, dtype=np.float64)
    Ua = None if U is None else np.asarray(U, dtype=np.float64)
    out = {"rule": rule, "n_fit": int(m.sum()), "n_held_out": int((~m).sum()), "level": level,
           "C_max_fit": float(tr["C"].max()), "laws": {}}
    for name in laws:
        if name == "datacon" and (Ua is None or not np.any(df["D"].to_numpy(float) > Ua)):
            out["laws"][name] = {"form": FORMS[name], "same_as": "chinchilla",
                                 "note": "no unique-token column or no repeated data: D' = D"}
            continue
        try:
            fit = fit_law(name, tr["N"], tr["D"], tr["loss"], C=tr["C"],
                          U=None if Ua is None else Ua[m], n_boot=n_boot, seed=seed,
                          bootstrap=bootstrap, noise=None if sig is None else sig[m],
                          level=level, loss_fn=loss_fn if name == "chinchilla" else "huber")
            kw = {"U": Ua[~m]} if (name == "datacon" and hasattr(fit, "u_max")) else {}
            p = fit.predict_loss(ho["N"].to_numpy(float), ho["D"].to_numpy(float), level=level, **kw)
        except Exception as exc:
            out["laws"][name] = {"form": FORMS[name], "error": f"{type(exc).__name__}: {exc}"}
            continue
        obs = ho["loss"].to_numpy(float)
        rel = p.loss / obs - 1.0
        inside = (obs >= p.low) & (obs <= p.high)
        runs = []
        for i in range(obs.size):
            runs.append({"N": float(ho["N"].iloc[i]), "D": float(ho["D"].iloc[i]),
                         "C": float(ho["C"].iloc[i]), "x_decades": float(p.x_decades[i]),
                         "observed": float(obs[i]), "predicted": float(p.loss[i]),
                         "low": float(p.low[i]), "high": float(p.high[i]),
                         "param_low": _f(p.param_low[i]), "param_high": _f(p.param_high[i]),
                         "misspec_sd": float(p.misspec_sd[i]), "rel_error": float(rel[i]),
                         "inside": bool(inside[i])})
        out["laws"][name] = {
            "form": FORMS[name], "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))), "coverage": float(np.mean(inside)),
            "n_inside": int(inside.sum()), "n": int(obs.size),
            "misspec": fit.misspec.to_dict() if fit.misspec else None,
            "bootstrap": fit.info.get("bootstrap", "none"), "n_boot": n_boot,
            "n_boot_failed": fit.n_boot_failed, "noise_source": fit.info.get("noise_source"),
            "params": {k: _f(v) for k, v in fit.params.items()}, "runs": runs}
    return out


def _f(v):
    v = float(v)
    return v if math.isfinite(v) else None


def summary_table(res: dict) -> pd.DataFrame:
    """One row per law: mean and max |relative error|, coverage of the prediction interval."""
    rows = []
    for name, r in res["laws"].items():
        if "mean_abs_rel_error" not in r:
            rows.append({"law": name, "form": r["form"], "mean abs. rel. error": "–",
                         "max abs. rel. error": "–", "coverage": "–",
                         "note": r.get("error") or r.get("note", "")})
            continue
        rows.append({"law": name, "form": r["form"],
                     "mean abs. rel. error": f"{r['mean_abs_rel_error'] * 100:.2f} %",
                     "max abs. rel. error": f"{r['max_abs_rel_error'] * 100:.2f} %",
                     "coverage": f"{r['n_inside']}/{r['n']}",
                     "note": f"misspec sd {r['misspec']['s0'] * 100:.2g} % + {r['misspec']['s1'] * 100:.2g} %/decade"
                     if r.get("misspec") else ""})
    return pd.DataFrame(rows)


def runs_table(res: dict) -> pd.DataFrame:
    """One row per (law, held-out run)."""
    rows = []
    for name, r in res["laws"].items():
        for run in r.get("runs", []):
            rows.append({"law": name, **run})
    return pd.DataFrame(rows)


def describe(res: dict) -> str:
    """The backtest in words and tables (the CLI's text output)."""
    lines = [f"backtest: {res['rule']}; {res['n_fit']} rows fitted, {res['n_held_out']} predicted "
             f"({res['level']:.0%} prediction intervals: bootstrap + misspecification)", ""]
    lines.append(summary_table(res).to_string(index=False))
    rt = runs_table(res)
    if len(rt):
        lines += ["", "per run:"]
        show = rt[["law", "N", "D", "C", "observed", "predicted", "low", "high", "rel_error", "inside"]]
        lines.append(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return "\n".join(lines)
