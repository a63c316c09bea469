"""A fitted learning-rate law lr*(N) = lr_ref x (N / n_ref)^gamma, ready for a sweep spec.

``python -m analysis lr-law SOURCE [--accounting total|kaplan] [--json]``: from a sweep or
table with several learning rates per size, the best learning rate per (optimizer, size)
(analysis.optimizers.best_lr: the grid's best, refined by a parabola in log lr through it
and its neighbours), then a least-squares line of log lr* against log N, printed with its
95 % interval and as the TOML line a [sweep] table takes:

    lr_law = { lr = 0.003, n_ref = 4.5e4, exponent = -0.25 }

(scaling's planner sets optim.lr = lr x (N / n_ref)^exponent, N under the spec's
accounting). n_ref is the geometric mean of the fitted sizes, where lr and exponent are
least correlated. N is the loaded table's N under the accounting in use (total: all
parameters, kaplan: non-embedding), stated with the result; the law is only meaningful in a
spec of the same accounting.

Rules:
- A size whose best lr is the smallest or largest lr tried is a BOUND (the optimum may be
  beyond the grid), listed as such and not fitted; a size run at one lr says nothing.
- At least 2 sizes with an interior optimum are needed, else a ValueError names the bounds.
- Cooldown trunks are not results and are left out (analysis.branches).
- Interval: 95 % percentile bootstrap that keeps the design (sizes, lr grid) and perturbs
  each (size, lr) cell's mean loss by its noise (analysis.noise: seed spread, else
  eval_loss_stderr, else an assumed 0.5 %), re-taking each size's refined optimum and
  refitting. This is the optima's measurement noise; with 3+ sizes the t-interval from
  the scatter about the line (misfit of the power law) is given beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.noise import loss_noise
from analysis.optimizers import best_lr, lr_sensitivity, refine_lr
from analysis.result import LEVEL, percentile_interval


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """lr_sensitivity's cells plus each cell's mean eval_loss_stderr and its noise."""
    sens = lr_sensitivity(df)
    if "eval_loss_stderr" in df:
        d = df[df["status"] == "done"].copy()
        d["N"] = d["N"].map(lambda v: float(f"{v:.4g}"))
        se = d.groupby(["optimizer", "N", "lr"])["eval_loss_stderr"].mean().rename("eval_loss_stderr")
        sens = sens.merge(se.reset_index(), on=["optimizer", "N", "lr"], how="left")
    ok = np.isfinite(sens["loss_mean"])
    noise_in = sens[ok].rename(columns={"loss_mean": "loss", "loss_std": "seed_std"})
    noise = loss_noise(noise_in)
    sens["sigma"] = np.nan
    sens.loc[ok, "sigma"] = noise.sigma
    sens.attrs["noise_source"] = noise.source
    return sens


def _line(logN: np.ndarray, loglr: np.ndarray, log_ref: float) -> tuple[float, float]:
    """(slope, log10 lr at n_ref) of the least-squares line."""
    slope, icpt = np.polyfit(logN, loglr, 1)
    return float(slope), float(icpt + slope * log_ref)


def fit_lr_law(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
               level: float = LEVEL) -> list[dict]:
    """One dict per optimizer: the law, its intervals, the sizes fitted and the bounds."""
    for col in ("lr", "N", "loss"):
        if col not in df or not pd.to_numeric(df[col], errors="coerce").notna().any():
            raise ValueError(f"lr-law needs a column {col!r} with numbers; columns: {list(df.columns)}")
    df = df.copy()
    if "optimizer" not in df:
        df["optimizer"] = "(one optimizer)"
    df["lr"] = pd.to_numeric(df["lr"], errors="coerce")
    if "C" not in df:
        df["C"] = np.nan
    _one_d_per_size(df)
    sens = _cells(df)
    best = best_lr(sens, warn=False)
    rng = np.random.default_rng(seed)
    out = []
    for opt, b in best.groupby("optimizer", sort=True):
        out.append(_fit_one(opt, b, sens[sens["optimizer"] == opt], n_boot, rng, level))
    for r in out:
        r["noise_source"] = sens.attrs["noise_source"]
    return out


def _one_d_per_size(df: pd.DataFrame) -> None:
    """Refuse a table where one (optimizer, N) was run at several token counts: its lrs
    would be compared across different D."""
    if "D" not in df:
        return
    d = df[df["status"].isin(["done", "diverged"])]
    key = d["N"].map(lambda v: float(f"{v:.4g}"))
    nd = d.assign(_n=key, _d=d["D"].map(lambda v: float(f"{v:.3g}"))).groupby(
        ["optimizer", "_n"])["_d"].nunique()
    many = nd[nd > 1]
    if len(many):
        (opt, n) = many.index[0]
        raise ValueError(f"optimizer {opt}, N = {n:.4g} was run at {int(many.iloc[0])} token counts "
                         "D: the best learning rate per size needs one D per size (filter the table "
                         "to one D per size, e.g. an lr sweep, not an IsoFLOP grid)")


def _fit_one(opt, b: pd.DataFrame, cells: pd.DataFrame, n_boot: int, rng, level: float) -> dict:
    b = b.sort_values("N")
    graded = b[b["n_lr"] >= 2]
    interior = graded[~graded["edge"] & np.isfinite(graded["lr_refined"])]
    bounds = [{"N": float(r.N), "lr_best": float(r.lr_best), "side": r.edge_side,
               "bound": ("lr* <= " if r.edge_side == "lowest lr tried" else "lr* >= ") + f"{r.lr_best:.4g}"
               if r.edge_side in ("lowest lr tried", "highest lr tried") else r.edge_side}
              for r in graded[graded["edge"]].itertuples()]
    single = [float(n) for n in b.loc[b["n_lr"] < 2, "N"]]
    res = {"optimizer": opt, "n_sizes": int(len(interior)),
           "sizes": [{"N": float(r.N), "lr_best": float(r.lr_best), "lr_refined": float(r.lr_refined),
                      "n_lr": int(r.n_lr), "loss": float(r.loss)} for r in interior.itertuples()],
           "bounds": bounds, "single_lr_sizes": single}
    if len(interior) < 2:
        res["error"] = (f"{len(interior)} size(s) with an interior best learning rate (need 2)"
                        + ("; at the grid's edge (bounds, not optima): "
                           + ", ".join(f"N = {x['N']:.4g}: {x['bound']}" for x in bounds) if bounds else "")
                        + (f"; run at a single lr: {len(single)} size(s)" if single else ""))
        return res
    logN = np.log10(interior["N"].to_numpy(float))
    loglr = np.log10(interior["lr_refined"].to_numpy(float))
    log_ref = float(logN.mean())
    gamma, log_lr_ref = _line(logN, loglr, log_ref)
    res.update({"exponent": gamma, "n_ref": float(10 ** log_ref), "lr": float(10 ** log_lr_ref)})
    # bootstrap: perturb each cell's mean by its noise, re-take each size's refined optimum
    gs, ls = [], []
    for _ in range(n_boot):
        lr_b = []
        for N in interior["N"]:
            c = cells[cells["N"] == N].sort_values("lr")
            m = c["loss_mean"].to_numpy(float)
            s = c["sigma"].to_numpy(float)
            fin = np.isfinite(m)
            mb = np.where(fin, m * np.exp(np.where(fin, s / np.where(fin, m, 1), 0)
                                          * rng.standard_normal(m.size)), np.nan)
            i = int(np.nanargmin(mb))
            lr_b.append(refine_lr(c["lr"].to_numpy(float), mb, i))
        g, l_ = _line(logN, np.log10(lr_b), log_ref)
        gs.append(g)
        ls.append(l_)
    lo, hi = percentile_interval(np.array(gs), level)
    llo, lhi = percentile_interval(np.array(ls), level)
    res.update({"exponent_ci": [lo, hi], "lr_ci": [10 ** llo if math.isfinite(llo) else math.nan,
                                                   10 ** lhi if math.isfinite(lhi) else math.nan],
                "n_boot": n_boot, "interval": "noise bootstrap of the per-size optima (design fixed)"})
    if len(interior) >= 3:
        fit = stats.linregress(logN, loglr)
        t = stats.t.ppf(0.5 + level / 2, len(interior) - 2)
        res["exponent_ci_scatter"] = [fit.slope - t * fit.stderr, fit.slope + t * fit.stderr]
    res["toml"] = toml_line(res)
    return res


def _num(v: float) -> str:
    """4 significant digits, as TOML accepts (1e-3 style for small/large values)."""
    s = f"{v:.4g}"
    return s if ("e" in s or "." in s or len(s) < 7) else f"{v:.4e}"


def toml_line(res: dict) -> str:
    """The line a [sweep] table of a spec takes."""
    return (f"lr_law = {{ lr = {_num(res['lr'])}, n_ref = {_num(res['n_ref'])}, "
            f"exponent = {_num(res['exponent'])} }}")


def describe(results: list[dict], convention: str, accounting: str | None) -> str:
    """Human-readable text of :func:`fit_lr_law`'s result."""
    n_name = {"total": "N_total (all parameters)", "kaplan": "N (non-embedding parameters)"}.get(
        accounting or "", "N as in the table")
    lines = [f"learning-rate law lr*(N) = lr · (N / n_ref)^exponent; N = {n_name}; {convention}"]
    for r in results:
        lines.append(f"\n{r['optimizer']}:")
        for s in r["sizes"]:
            lines.append(f"  N = {s['N']:.4g}: best lr {s['lr_best']:.4g} (refined {s['lr_refined']:.4g}, "
                         f"{s['n_lr']} lrs tried, loss {s['loss']:.4f})")
        for s in r["bounds"]:
            lines.append(f"  N = {s['N']:.4g}: {s['bound']} ({s['side']}: a bound, not an optimum; "
                         "not fitted)")
        if r["single_lr_sizes"]:
            lines.append(f"  {len(r['single_lr_sizes'])} size(s) run at a single lr: not used")
        if "error" in r:
            lines.append(f"  no law: {r['error']}")
            continue
        lo, hi = r["exponent_ci"]
        llo, lhi = r["lr_ci"]
        lines.append(f"  exponent = {r['exponent']:.4g} [95% CI {lo:.4g}, {hi:.4g}]; lr at n_ref = "
                     f"{r['lr']:.4g} [{llo:.4g}, {lhi:.4g}]; n_ref = {r['n_ref']:.4g} (geometric "
                     f"mean of the {r['n_sizes']} fitted sizes)")
        if "exponent_ci_scatter" in r:
            a, b = r["exponent_ci_scatter"]
            lines.append(f"  (exponent from the scatter about the line, t-interval: [{a:.4g}, {b:.4g}])")
        lines.append(f"  intervals: {r['interval']}, {r['n_boot']} replicates; noise: {r['noise_source']}")
        if r["n_sizes"] == 2:
            lines.append("  two sizes: the line goes through both; the interval is their optima's "
                         "noise only, not the law's misfit")
        lines.append(f"  for a [sweep] table ({accounting or 'same'} accounting):")
        lines.append(f"    {r['toml']}")
    return "\n".join(lines)


def load_for_lr_law(source, accounting: str | None = None) -> pd.DataFrame:
    """The table (trunks left out) with N, loss, lr, optimizer, status under the accounting."""
    from analysis.branches import annotate_roles, drop_trunks
    from analysis.load import load_results

    df = load_results(source, accounting=accounting)
    annotate_roles(df, df.attrs.get("folder"))
    df, n = drop_trunks(df)
    df.attrs["n_trunks"] = n
    return df


__all__ = ["fit_lr_law", "toml_line", "describe", "load_for_lr_law"]
