"""``analyze(source)``: a results table in, a report folder out.

The report folder holds ``summary.md`` (what was fitted, the findings in plain words, what
was skipped and why), ``figures/`` (PNG + PDF of each figure), ``tables/`` (Markdown and
LaTeX tables of fitted parameters with 95 % intervals, predictions, per-budget optima,
optimizer comparisons) and ``fits.json`` (every fit, machine-readable).

Which analyses run is decided from the table:

- power laws L(N), L(D), L(C): at least 4 distinct values of the variable among done runs;
- Approach 3 and Kaplan's L(N, D): at least 6 (N, D) cells with 3 distinct N and 3 distinct D;
- Approach 2 (IsoFLOP): a ``compute_budget`` column with >= 3 budgets of >= 3 sizes each;
- frontier and Approach 1: learning curves (curves.parquet / curves.csv) of >= 2 runs
  (Approach 1: >= 3 sizes);
- optimizer comparison: more than one optimizer, or a learning-rate grid (>= 3 lrs for
  some size);
- task abilities across scale (analysis/emergence.py): ``task/<sub-task>/<metric>`` columns.

Scaling-law fits use the done runs of one optimizer (the most common one when there are
several) and, where a (N, D) cell was run with several learning rates and/or seeds, the
seed-averaged loss at the cell's best learning rate.

Conventions, stated in the Data section and in every figure and table caption: the compute
accounting (``accounting=``, default the table's own; see analysis/load.py: total = N_total
and C_exact, kaplan = non-embedding N and 6ND; never mixed), the eval set (the loss column,
with eval tokens and documents where recorded), the loss noise (analysis/noise.py: seed
spread, else eval_loss_stderr, else an assumed 0.5 %) and, for every interval, which
bootstrap made it and how many of its replicates failed. Designed sweeps (a compute_budget
column) and tables that measure their noise get the noise-aware bootstrap for Approach 2,
Approach 3 and Kaplan's L(N, D); Pareto-front power laws and the learning-curve frontier keep
the case bootstrap (a front is a selection, not a design). Parameters the data do not
identify (analysis/chinchilla.py, analysis/powerlaw.py) are printed with a one-sided bound,
and what depends on them is marked conditional; an IsoFLOP exponent from fewer than 3
bracketed budgets is "not determined".
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import emergence, plots, report_backtest
from .chinchilla import fit_approach3, fit_kaplan
from .frontier import fit_approach1, fit_frontier
from . import families as fam
from .branches import TRUNK_NOTE, compute_spent, compute_text, fit_curves, split_curves
from .followups import added_points, added_points_section
from .fitrows import reference_optimizer, select_fit_rows
from . import validation
from .isoflop import fit_isoflop
from .load import describe_dropped, load_curves, load_results
from .noise import noise_model
from .optimizers import (EdgeOfGridWarning, best_lr, best_lr_runs, compute_laws,
                         compute_multiplier, lr_scaling, lr_sensitivity, seed_spread)
from .powerlaw import fit_power_law
from .predict import compute_optimal
from .result import fmt, json_default
from .style import FigureWriter
from .tables import to_markdown, value_ci, write_table


def default_out_dir(source: str | Path) -> Path:
    p = Path(source)
    if p.is_dir():
        return p / "report"
    if p.name in ("results.csv", "results.parquet"):
        return p.parent / "report"
    return p.with_name(p.stem + "_report")


def _param_text(fit, k: str, digits: int = 4) -> str:
    """A parameter's value, or what can be said of it when the data do not identify it."""
    if k in fit.unidentified:
        b = fit.bounds.get(k)
        return f"{k} (not identified{'; ' + k + ' ≤ ' + fmt(b[1], 3) if b else ''})"
    return fmt(fit.params[k], digits)


def _boot_text(fit) -> str:
    if fit.samples is None or not len(fit.samples):
        return "no bootstrap"
    how = "noise bootstrap" if str(fit.info.get("bootstrap", "")).startswith("noise") else "case bootstrap"
    out = f"{how}, {len(fit.samples)} replicates, {fit.n_boot_failed} failed"
    if fit.n_boot_failed > 0.1 * len(fit.samples):
        out += " (the interval is over the successful replicates only: treat it as unreliable)"
    return out


def _sig(v, digits=6):
    return float(f"{v:.{digits}g}") if np.isfinite(v) else v


def pareto_front(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the rows on the lower-left Pareto front: at each x the lowest loss, kept
    only if it is lower than every loss at smaller x ("the lowest loss reached with at most
    x")."""
    x = np.asarray(x, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    order = np.lexsort((loss, x))  # by x, then loss
    keep, best, last_x = [], math.inf, None
    for i in order:
        if last_x is not None and x[i] == last_x:
            continue  # only the lowest loss at each x
        last_x = x[i]
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=int)


def best_per_value(x: np.ndarray, loss: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"x": x, "loss": loss})
    df["k"] = df["x"].map(_sig)
    out = df.loc[df.groupby("k")["loss"].idxmin(), ["x", "loss"]]
    return out.sort_values("x").reset_index(drop=True)


class _Report:
    def __init__(self, out: Path, source: str):
        self.out = out
        self.source = source
        self.fig_dir = out / "figures"
        self.tab_dir = out / "tables"
        self.figures: list[tuple[str, str]] = []
        self.tables: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.findings: list[str] = []
        self.sections: list[str] = []
        self.fits: dict[str, dict] = {}
        self.param_rows: list[dict] = []
        self.warnings: list[str] = []
        self.convention = ""
        self.eval_set = ""
        self.writer = FigureWriter()  # figures are drawn on another core while fits go on

    def cap(self, text: str, fit=None, noise: str | None = None) -> str:
        """A caption with its convention: accounting, eval set and, for fits with intervals,
        how they were made (bootstrap kind, noise source, failed replicates). ``fit``: one
        fit or a list of them."""
        if "eval set:" in text:
            return text
        bits = [self.convention, f"eval set: {self.eval_set}"]
        fits = [f for f in (fit if isinstance(fit, (list, tuple)) else [fit])
                if f is not None and f.samples is not None and len(f.samples)]
        for f in fits:
            how = "noise bootstrap" if str(f.info.get("bootstrap", "")).startswith("noise") else "case bootstrap"
            src = f.info.get("noise_source") or noise
            label = f"L({f.info['x']})" if f.kind.startswith("power") and "x" in f.info else f.kind
            bits.append(f"{label}: {how}, {len(f.samples)} replicates, {f.n_boot_failed} failed"
                        + (f", noise: {src}" if src and how == "noise bootstrap" else ""))
        if fit is not None and not fits:
            pb = getattr(fit, "info", {}).get("per_budget_bootstrap") if not isinstance(fit, (list, tuple)) else None
            bits.append(pb or "no bootstrap")
        return text.rstrip(".") + ". [" + "; ".join(b for b in bits if b) + "]"

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))

    def figure(self, name: str, caption: str, make, fit=None) -> None:
        caption = self.cap(caption, fit)
        try:
            fig = make()
            self.writer.save(fig, self.fig_dir, name)
            self.figures.append((name, caption))
        except Exception as exc:  # a figure must never sink the report
            self.skip(f"figure `{name}`", f"{type(exc).__name__}: {exc}")
            self.warnings.append(traceback.format_exc(limit=3))

    def table(self, df: pd.DataFrame, name: str, caption: str, digits: int = 4, fit=None) -> None:
        caption = self.cap(caption, fit)
        write_table(df, self.tab_dir, name, caption=caption, digits=digits)
        self.tables.append((name, caption))

    def add_params(self, fit_name: str, fit, names: list[str]) -> None:
        self.fits[fit_name] = fit.to_dict()
        for k in names:
            if k not in fit.params:
                continue
            lo, hi = fit.interval(k)
            note = ""
            if k in fit.unidentified:
                b = fit.bounds.get(k)
                note = "not identified" + (f"; {k} {b[0]} {fmt(b[1], 3)}" if b else "")
            elif k in ("a", "b", "G") and fit.info.get("conditional"):
                note = "conditional (the model has an unidentified parameter)"
            self.param_rows.append({"fit": fit_name, "parameter": k, "estimate": fit.params[k],
                                    "ci_low": lo, "ci_high": hi, "note": note,
                                    "bootstrap": _boot_text(fit)})


def _c_label(df: pd.DataFrame) -> str:
    """Axis label of the compute column under the table's accounting."""
    acc = df.attrs.get("accounting")
    if acc == "total":
        return "compute C = C_exact (FLOPs)"
    if acc == "kaplan":
        return "compute C = 6 N D (FLOPs, Kaplan N)"
    return f"compute C (FLOPs, column {df.attrs.get('columns', {}).get('C')})"


def _eval_set(df: pd.DataFrame, done: pd.DataFrame) -> str:
    """The eval set in words: tokens and documents where the table records them."""
    loss = df.attrs.get("columns", {}).get("loss")
    parts = []
    for col, unit in (("eval_tokens", "tokens"), ("eval_documents", "documents")):
        if col in done and pd.to_numeric(done[col], errors="coerce").notna().any():
            v = pd.to_numeric(done[col], errors="coerce").dropna()
            parts.append(f"{fmt(float(v.median()), 3)} {unit}" + ("" if v.nunique() == 1 else " (median)"))
    est = ""
    if "eval_estimand" in done:
        kinds = sorted(str(v) for v in done["eval_estimand"].dropna().unique())
        est = (" (held-out per-token loss: every validation token weighted equally)"
               if kinds == ["per_token"] else f" (estimands: {', '.join(kinds)})" if kinds else "")
    if parts:
        return f"`{loss}` over " + " in ".join(parts) + est
    return f"`{loss}`{est} (the table records no eval set size)"


def _params_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        est = ("not determined" if not math.isfinite(r["estimate"]) else
               fmt(r["estimate"], 4) if r["note"].startswith("not identified") else
               value_ci(r["estimate"], r["ci_low"], r["ci_high"]))
        out.append({"fit": r["fit"], "parameter": r["parameter"], "estimate [95% CI]": est,
                    "note": r["note"], "intervals": r["bootstrap"]})
    return pd.DataFrame(out)


class _Skipped(Exception):
    """A fit the design cannot support; the report already says why."""


def analyze(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    loss_fn: str = "huber",
    predict_C=None,
    accounting: str | None = None,
    ngram=None,
    seed_noise: float | None = None,
) -> Path:
    """Fit what the table supports, write figures, tables and summary.md; return the folder.

    Bad input (no such file, an empty table, no loss column, a mixed accounting) raises
    before anything is written. ``ngram``: n-gram result folders or files (default: the
    sweep folder's ngram/*/result.json) drawn as reference lines (analysis/families.py)."""
    t0 = time.time()
    source = Path(source)
    pl_loss = "huber" if loss_fn == "huber_nll" else loss_fn  # the likelihood is Approach 3 only
    out = Path(out_dir) if out_dir is not None else default_out_dir(source)
    df = load_results(source, n_col=n_col, d_col=d_col, c_col=c_col, loss_col=loss_col,
                      accounting=accounting)
    sel = select_fit_rows(df)  # the rows every fit reads; `fit` uses the same (analysis/fitrows.py)
    spent = compute_spent(df)
    roles, trunk_table, n_trunks = sel.roles, sel.trunks, len(sel.trunks)
    df, done = sel.table, sel.done
    if len(done) == 0 and df.attrs.get("dropped"):
        raise ValueError(f"{source}: no row can be fitted ({len(df)} rows; {describe_dropped(df)})")
    out.mkdir(parents=True, exist_ok=True)
    rep = _Report(out, str(source))
    status_counts = df["status"].value_counts().to_dict()
    if spent is not None:
        rep.fits["compute"] = spent

    rows, sel_notes = sel.rows, sel.notes
    noise = noise_model(rows, df.attrs.get("folder"), seed_noise=seed_noise) if len(rows) else None
    designed = "compute_budget" in rows and np.isfinite(pd.to_numeric(rows["compute_budget"], errors="coerce")).any() if len(rows) else False
    measured = noise is not None and not noise.source.startswith("assumed")
    boot = "noise" if (designed or measured) else "cases"
    conv = df.attrs.get("convention", "")
    rep.convention = conv
    eval_set = _eval_set(df, done)
    rep.eval_set = eval_set
    data_lines = [
        f"- source: `{df.attrs.get('source')}`",
        f"- rows: {len(df)} ({', '.join(f'{k}: {v}' for k, v in sorted(status_counts.items()))}); "
        "only `done` rows are fitted",
        "- columns used: " + ", ".join(f"{k} ← `{v}`" for k, v in df.attrs["columns"].items() if v),
    ]
    data_lines.append(f"- compute accounting: {conv}")
    data_lines.append(f"- loss: `{df.attrs['columns'].get('loss')}`; eval set: {eval_set}")
    if noise is not None:
        data_lines.append(f"- loss noise: {noise.source}; intervals: "
                          + ("noise-aware bootstrap (design fixed, each run's loss perturbed by its noise)"
                             if boot == "noise" else "case bootstrap (runs resampled with replacement; "
                             "the table is not a designed sweep and measures no noise)"))
    if noise is not None and boot == "noise" and measured:
        rep.findings.append(noise.sentence)  # the noise model in one sentence (analysis/noise.py)
    if df.attrs.get("dropped"):
        data_lines.append("- " + describe_dropped(df))
    if df.attrs.get("derived"):
        data_lines.append("- derived: " + "; ".join(df.attrs["derived"]))
    if n_trunks:
        data_lines.append(f"- {n_trunks} cooldown trunk run(s) left out of every fit and figure of "
                          f"results ({TRUNK_NOTE}); their {int((df['role'] == 'branch').sum())} "
                          "branches are ordinary results")
        rep.fits["trunks_excluded"] = {"n": n_trunks, "why": TRUNK_NOTE}
    if spent is not None:
        data_lines.append("- compute actually spent: " + compute_text(spent))
    for note in sel_notes:
        data_lines.append(f"- {note}")
    if len(rows):
        data_lines.append(
            f"- scaling-law rows: {len(rows)}; N {fmt(rows['N'].min(), 3)}–{fmt(rows['N'].max(), 3)}, "
            f"D {fmt(rows['D'].min(), 3)}–{fmt(rows['D'].max(), 3)}, "
            f"C {fmt(rows['C'].min(), 3)}–{fmt(rows['C'].max(), 3)} FLOPs")
    rep.sections.append("## Data\n\n" + "\n".join(data_lines) + "\n")
    if spent is not None:
        rep.findings.append(compute_text(spent))
    added = added_points(df.attrs.get("folder"))
    if added:
        rep.fits["added_points"] = added
        rep.sections.append(added_points_section(added))
    if len(rows) == 0:
        rep.skip("all fits", "no done rows with a finite loss")

    # ---------------------------------------------------------------- power laws
    pl_fits, pl_env = {}, {}
    if len(rows):
        for key, label in (("N", "parameters"), ("D", "tokens"), ("C", "compute")):
            x = rows[key].to_numpy(float)
            L = rows["loss"].to_numpy(float)
            idx = pareto_front(x, L)
            env = pd.DataFrame({"x": x[idx], "loss": L[idx]})
            how = f"Pareto front (lowest loss reached with at most that {key})"
            # distinct to within 5 % (IsoFLOP points of one budget differ only by rounding)
            n_distinct = np.unique(np.round(np.log10(env["x"].to_numpy(float)) / 0.02)).size
            if n_distinct < 4:
                rep.skip(f"power law L({key})", f"{n_distinct} distinct {key} values (to 5 %) on "
                         f"the {how} (need 4)")
                continue
            try:
                # case bootstrap on purpose: the front is a selection of the lowest losses, not a
                # design; perturbing losses and re-taking the minimum biases the front downwards,
                # and resampling runs also carries the misspecification of L(x) on such a front
                fit = fit_power_law(env["x"], env["loss"], irreducible=True, n_boot=n_boot,
                                    seed=seed, name=key, loss_fn=pl_loss)
                fit.info["bootstrap"] = "cases (Pareto-front rows resampled)"
            except Exception as exc:
                rep.skip(f"power law L({key})", str(exc))
                continue
            fit.info["points"] = how
            pl_fits[key], pl_env[key] = fit, env
            rep.add_params(f"L({key}) = E + ({key}_c/{key})^α", fit, ["E", "x_c", "alpha"])
            lo, hi = fit.interval("alpha")
            weak = (not (np.isfinite(lo) and lo > 0)) or hi / lo > 2
            rep.findings.append(
                f"L({key}) on the {how}: exponent α_{key} = {value_ci(fit['alpha'], lo, hi, 3)}, "
                + (f"irreducible E not identified ({fit.unidentified['E']}; one-sided bound "
                   f"E ≤ {fmt(fit.bounds['E'][1], 3) if 'E' in fit.bounds else 'n/a'}; α is conditional on it)"
                   if "E" in fit.unidentified else f"irreducible E = {value_ci(fit['E'], *fit.interval('E'), 3)}")
                + f" ({_boot_text(fit)})."
                + (f" The exponent is poorly constrained by this design (its interval spans more "
                   f"than a factor 2): the runs do not trace L({key}) at fixed other resources."
                   if weak else ""))
        if pl_fits:
            rep.figure("loss_vs_size", "L(N), L(D) and L(C) on the Pareto front of the runs (grey: all runs), with power-law fits "
                       "(E + (x_c/x)^α) and 95% bootstrap bands; exponents in the legends.",
                       lambda: plots.loss_vs_size(rows, pl_fits, pl_env,
                                                  labels={"N": plots.n_axis_label(df),
                                                          "C": _c_label(df)}), fit=list(pl_fits.values()))

    # ---------------------------------------------------------------- Approach 3
    a3 = None
    if len(rows):
        nN, nD = rows["N"].map(_sig).nunique(), rows["D"].map(_sig).nunique()
        if len(rows) >= 6 and nN >= 3 and nD >= 3:
            try:
                a3 = fit_approach3(rows["N"], rows["D"], rows["loss"], n_boot=n_boot, seed=seed,
                                   loss_fn=loss_fn, bootstrap=boot,
                                   noise=noise if measured else None, C=rows["C"])
                rep.add_params("Approach 3: E + A/N^α + B/D^β", a3,
                               ["E", "A", "B", "alpha", "beta", "a", "b"]
                               + [k for k in ("a_C", "b_C", "sigma") if k in a3.params])
                p = a3.params
                rep.findings.append(
                    f"Approach 3: L(N, D) = {_param_text(a3, 'E')} + {fmt(p['A'], 4)}/N^{p['alpha']:.3f} + "
                    f"{fmt(p['B'], 4)}/D^{p['beta']:.3f}; compute-optimal N ∝ C^a "
                    f"{'(conditional on the full model) ' if a3.unidentified else ''}with a = "
                    f"{value_ci(p['a'], *a3.interval('a'), 3)} and D ∝ C^b with b = "
                    f"{value_ci(p['b'], *a3.interval('b'), 3)} along C = 6ND"
                    + (f"; along the table's own compute ({_c_label(df)}, the IsoFLOP budgets' axis) "
                       f"a_C = {value_ci(p['a_C'], *a3.interval('a_C'), 3)}, "
                       f"b_C = {value_ci(p['b_C'], *a3.interval('b_C'), 3)}"
                       if "a_C" in p else "")
                    + f" ({len(rows)} runs, "
                    f"{a3.info['n_starts']} starts, mean |log residual| "
                    f"{a3.info['mean_abs_log_residual']:.4f}; {_boot_text(a3)}; {conv}).")
                if a3.unidentified:
                    red = a3.info.get("reduced_model")
                    rep.findings.append(
                        "Approach 3 is not identified by these data: "
                        + "; ".join(f"{k}: {why}" for k, why in a3.unidentified.items())
                        + f". {a3.info['conditional']}."
                        + (f" The reduced model {red['form']} gives α = {red['alpha']:.3f}, β = "
                           f"{red['beta']:.3f}, a = {red['a']:.3f}, objective {red['objective']:.4g} "
                           f"against {red['objective_full']:.4g} with E." if red else ""))
                rep.figure("residuals", rep.cap("Approach 3: observed against fitted loss, and log "
                           "residuals against compute, coloured by N"),
                           lambda: plots.residuals(a3, rows["N"], rows["D"], rows["loss"], C=rows["C"],
                                                   c_label=_c_label(df)))
            except Exception as exc:
                rep.skip("Approach 3", f"{type(exc).__name__}: {exc}")
            try:
                kap = fit_kaplan(rows["N"], rows["D"], rows["loss"], n_boot=n_boot, seed=seed,
                                 bootstrap=boot, noise=noise if measured else None)
                rep.add_params("Kaplan L(N, D)", kap, ["alpha_N", "alpha_D", "N_c", "D_c"])
            except Exception as exc:
                rep.skip("Kaplan L(N, D)", f"{type(exc).__name__}: {exc}")
        else:
            rep.skip("Approach 3 and Kaplan L(N, D)", f"{len(rows)} (N, D) cells with {nN} distinct N "
                     f"and {nD} distinct D (need >= 6 cells, >= 3 of each)")

    # ---------------------------------------------------------------- Approach 2
    iso = None
    iso_rows = None
    if len(rows) and "compute_budget" in rows and np.isfinite(rows["compute_budget"]).any():
        r = rows[np.isfinite(rows["compute_budget"])]
        per = r.groupby("compute_budget")["N"].apply(lambda s: s.map(_sig).nunique())
        good = per[per >= 3]
        if len(good) >= 3:
            iso_rows = r[r["compute_budget"].isin(good.index)].rename(columns={"compute_budget": "budget"})
            try:
                iso_noise = noise.take(rows.index.get_indexer(iso_rows.index)) if noise is not None else None
                iso = fit_isoflop(iso_rows["C"], iso_rows["loss"], N=iso_rows["N"], D=iso_rows["D"],
                                  budget=iso_rows["budget"], n_boot=n_boot, seed=seed,
                                  noise=iso_noise if measured else None)
                rep.add_params("Approach 2 (IsoFLOP)", iso, ["a", "b", "k_N", "k_D"])
                rep.fits["Approach 2 (IsoFLOP)"]["budgets"] = json.loads(iso.budgets.to_json(orient="records"))
                nb, nu = iso.info["n_budgets"], iso.info["n_budgets_used"]
                if iso.determined:
                    others = "; ".join(
                        f"{e}: {value_ci(d['a'], *d['ci'].get('a', (math.nan, math.nan)), 3)}"
                        for e, d in iso.estimators.items() if e != iso.info["estimator"])
                    rep.findings.append(
                        f"Approach 2 (IsoFLOP, {nu} of {nb} budgets bracket their minimum; minima by the "
                        f"{iso.info['estimator']} estimator, the unweighted line through them as published "
                        f"studies fit it; weighted by each budget's propagated noise a = "
                        f"{iso.estimators[iso.info['estimator']]['weighted']['a']:.3f}): "
                        f"N_opt ∝ C^a with a = {value_ci(iso['a'], *iso.interval('a'), 3)}, "
                        f"D_opt ∝ C^b with b = {value_ci(iso['b'], *iso.interval('b'), 3)} "
                        f"({_boot_text(iso)}; noise: {iso.info['noise_source']}; {conv}). "
                        f"Other estimators of the minima give a = {others}. "
                        f"Estimator {iso.info['estimator_choice']}.")
                    for line in iso.info.get("disagreement", []):
                        rep.findings.append(f"Warning (IsoFLOP estimators disagree): {line}.")
                else:
                    rep.findings.append(f"Approach 2 (IsoFLOP, {nb} budgets, {nu} bracket their minimum): "
                                        f"the allocation exponents are {iso.info['not_determined']}.")
                for s in iso.info["budgets_skipped"]:
                    rep.skip("IsoFLOP budget", s)
                tb = iso.budgets.copy()
                show = pd.DataFrame({
                    "C": tb["C"], "runs": tb["n_runs"], "sizes": tb["n_sizes"],
                    "N_opt [95% CI]": [value_ci(a, b, c, 3) for a, b, c in zip(
                        tb["N_opt"], tb.get("N_opt_low", np.nan * tb["C"]), tb.get("N_opt_high", np.nan * tb["C"]))],
                    "D_opt": tb.get("D_opt", np.nan * tb["C"]),
                    "loss_opt": tb.get("loss_opt", np.nan * tb["C"]),
                    "used": tb["used"], "note": tb["note"].fillna(""),
                })
                for e in ("akima", "local", "parabola"):
                    if e != iso.info["estimator"] and f"N_opt_{e}" in tb:
                        show[f"N_opt ({e})"] = tb[f"N_opt_{e}"]
                rep.table(show, "isoflop_budgets", rep.cap(
                    f"IsoFLOP minima per compute budget ({iso.info['estimator']} estimator; the others "
                    f"in their own columns; {nu} of {nb} budgets used)", iso))
                rep.figure("isoflop", rep.cap(
                    f"IsoFLOP profiles: loss against N per budget, the {iso.info['estimator']} "
                    "estimator's curve and minimum (95% interval); hollow: budget excluded "
                    f"(minimum not bracketed); {nu} of {nb} budgets used", iso),
                           lambda: plots.isoflop(iso_rows, iso))
            except Exception as exc:
                rep.skip("Approach 2 (IsoFLOP)", f"{type(exc).__name__}: {exc}")
        else:
            rep.skip("Approach 2 (IsoFLOP)", f"{len(good)} compute budgets with >= 3 sizes (need 3)")
    elif len(rows):
        rep.skip("Approach 2 (IsoFLOP)", "no compute_budget column (or all NaN)")

    # ---------------------------------------------------------------- curves
    frontier = a1 = None
    curves = None
    trunk_rows = trunk_table
    try:
        with_trunks = df
        if len(trunk_rows):
            with_trunks = pd.concat([df, trunk_rows], ignore_index=True)
            with_trunks.attrs = dict(df.attrs)
        curves = load_curves(source, results=with_trunks)
    except Exception as exc:
        rep.skip("learning curves", f"could not read: {exc}")
    if curves is None:
        if not any(w == "learning curves" for w, _ in rep.skipped):
            rep.skip("frontier, Approach 1, learning-curve figure", "no curves.parquet / curves.csv")
    elif len(curves):
        family = fam.reference_family(done)
        curves, trunk_curves = split_curves(curves, roles)
        if "point_id" in done:
            # the frontier is an envelope: every done run of the reference optimizer may enter
            ref = reference_optimizer(done)
            pick = (done["optimizer"] == ref) if ref is not None else pd.Series(True, index=done.index)
            if family is not None:  # one model family's curves (as the scaling-law rows)
                pick &= fam.arch_series(done) == family
            ids = done.loc[pick, "point_id"]
            curves = curves[curves["point_id"].isin(set(ids))]
        sizes = dict(zip(done["point_id"], done["N"])) if "point_id" in done else {}
        if curves["point_id"].nunique() >= 2 and n_trunks:
            rep.skip("frontier and Approach 1",
                     "a cooldown design: each branch's own curve begins at its trunk's step and "
                     "the trunks run at a constant learning rate, so no curve here traces the "
                     "lowest loss reachable at each compute; Approaches 2 and 3 use the branches' "
                     "final losses")
        if curves["point_id"].nunique() >= 2:
            try:
                if n_trunks:
                    raise _Skipped
                frontier = fit_frontier(fit_curves(curves, roles), sizes=sizes, n_boot=n_boot, seed=seed, loss_fn=pl_loss)
                rep.add_params("Frontier L(C) = E + (C_c/C)^α", frontier.law, ["E", "x_c", "alpha"])
                rep.findings.append(
                    f"Compute-efficient frontier of the learning curves ({frontier.info['n_runs']} runs): "
                    f"L(C) = E + (C_c/C)^α with α = {value_ci(frontier.law['alpha'], *frontier.law.interval('alpha'), 3)}, "
                    f"E = {value_ci(frontier.law['E'], *frontier.law.interval('E'), 3)}.")
            except _Skipped:
                pass
            except Exception as exc:
                rep.skip("frontier", f"{type(exc).__name__}: {exc}")
            try:
                if n_trunks:
                    raise _Skipped
                a1 = fit_approach1(fit_curves(curves, roles), sizes, n_boot=n_boot, seed=seed)
                rep.add_params("Approach 1 (frontier)", a1, ["a", "b", "k_N", "k_D"])
                rep.findings.append(
                    f"Approach 1 (sizes on the frontier): a = {value_ci(a1['a'], *a1.interval('a'), 3)}, "
                    f"b = {value_ci(a1['b'], *a1.interval('b'), 3)} "
                    f"({a1.info['n_sizes_on_frontier']} sizes attain the frontier).")
            except _Skipped:
                pass
            except Exception as exc:
                rep.skip("Approach 1", f"{type(exc).__name__}: {exc}")
            tsizes = {pid: n for pid, n in zip(trunk_rows["point_id"], trunk_rows["N"])} \
                if len(trunk_curves) else {}
            rep.figure("learning_curves", "Learning curves against tokens and FLOPs (log-log), "
                       "coloured by N" + (f", {family} runs only" if family else "")
                       + (", with the compute-efficient frontier and its power-law fit "
                          "(95% band, bootstrap over runs)" if frontier is not None else "")
                       + ("; cooldown trunks (constant lr) dashed, drawn once, each branch from "
                          "its branch step on; trunks are not fitted" if len(trunk_curves) else "")
                       + ".",
                       lambda: plots.learning_curves(
                           curves, sizes, frontier,
                           c_label=_c_label(df) if df.attrs.get("accounting") else "training FLOPs (6 N tokens)",
                           trunks=trunk_curves, trunk_sizes=tsizes),
                       fit=frontier)
        else:
            rep.skip("frontier", "curves of fewer than 2 done runs")

    iso_ok = iso if (iso is not None and iso.determined) else None
    if iso_ok is not None or a1 is not None or a3 is not None:
        shown = ", ".join(x for x, fit in (("per-budget minima (Approach 2)", iso_ok),
                                           ("frontier sizes (Approach 1)", a1)) if fit is not None)
        rep.figure("optimal_allocation", "Compute-optimal N and D against compute: "
                   + (shown + ", and " if shown else "")
                   + "the fitted power laws with 95% bands"
                   + (", including Approach 3's allocation (minimised along the table's own "
                      "C(N, D), the same compute axis as Approach 2)" if a3 is not None else "") + ".",
                   lambda: plots.optimal_allocation(iso=iso_ok, a1=a1, a3=a3, runs=rows,
                                                    C_range=[rows["C"].min(), rows["C"].max()],
                                                    c_label=_c_label(df)),
                   fit=[f for f in (iso_ok, a1, a3) if f is not None])

    # ---------------------------------------------------------------- predictions
    if len(rows) and (a3 is not None or iso_ok is not None or a1 is not None):
        if predict_C is None:
            top = 10 ** math.ceil(math.log10(rows["C"].max()))
            predict_C = [top, top * 10, top * 100]
        loss_law = frontier.law if frontier is not None else pl_fits.get("C")
        pred = compute_optimal(predict_C, chinchilla=a3, isoflop=iso_ok, approach1=a1, loss_law=loss_law)
        if len(pred):
            show = pd.DataFrame({
                "C (FLOPs)": pred["C"], "method": pred["method"],
                "N_opt [95% CI]": [value_ci(r.N_opt, r.N_opt_low, r.N_opt_high, 3) for r in pred.itertuples()],
                "D_opt [95% CI]": [value_ci(r.D_opt, r.D_opt_low, r.D_opt_high, 3) for r in pred.itertuples()],
                "loss [95% CI]": [value_ci(r.loss_opt, r.loss_opt_low, r.loss_opt_high, 4)
                                  if np.isfinite(r.loss_opt) else "–" for r in pred.itertuples()],
            })
            rep.table(show, "predictions", "Compute-optimal allocation and loss predicted for "
                      "larger budgets (extrapolations; intervals are bootstrap percentiles and "
                      "do not include model misspecification"
                      + ("; Approach 3 rows are conditional: the model has a parameter the data do not "
                         "identify" if (a3 is not None and a3.unidentified) else "") + ")",
                      fit=[f for f in (a3, iso_ok, a1) if f is not None])
            rep.fits["predictions"] = json.loads(pred.to_json(orient="records"))
            first = pred.iloc[0]
            rep.findings.append(
                f"Prediction at C = {fmt(first['C'], 2)} FLOPs ({first['method']}"
                + (", conditional: the model has a parameter the data do not identify"
                   if (first["method"].startswith("Approach 3") and a3 is not None and a3.unidentified) else "")
                + "): N_opt = "
                f"{value_ci(first['N_opt'], first['N_opt_low'], first['N_opt_high'], 3)}, D_opt = "
                f"{value_ci(first['D_opt'], first['D_opt_low'], first['D_opt_high'], 3)}"
                + (f", loss {value_ci(first['loss_opt'], first['loss_opt_low'], first['loss_opt_high'], 4)}"
                   if np.isfinite(first["loss_opt"]) else "") + ".")

    if len(rows):  # "Does the law extrapolate?" (analysis/report_backtest.py)
        report_backtest.section(rep, rows, n_boot=n_boot, seed=seed, boot=boot,
                                noise=noise if measured else None, c_label=_c_label(df))
    # "Does the prediction hold? (a 10x run)": runs of followup.validate (analysis/validation.py)
    validation.add_to_report(rep, sel.validation, a3, df.attrs.get("folder"))

    # ---------------------------------------------------------------- optimizers
    _optimizer_section(rep, df, done, n_boot=n_boot, seed=seed)

    # ---------------------------------------------------------------- model families
    _families_section(rep, df, done, source, ngram, n_boot=n_boot, seed=seed)
    # ---------------------------------------------------------------- task abilities
    if len(done) and emergence.subtasks(done):  # task/<sub-task>/<metric> columns (data.tasks)
        emergence.section(rep, done, n_boot=n_boot, seed=seed)

    # ---------------------------------------------------------------- write
    if rep.param_rows:
        rep.table(_params_table(rep.param_rows), "parameters",
                  "Fitted parameters with 95% bootstrap percentile intervals")
    (out / "fits.json").write_text(json.dumps(rep.fits, indent=2, default=json_default))
    for name, error in rep.writer.wait().items():  # a figure must never sink the report
        rep.figures = [f for f in rep.figures if f[0] != name]
        rep.skip(f"figure `{name}`", error)
    _write_summary(rep, time.time() - t0)
    return out



def _optimizer_section(rep: _Report, df: pd.DataFrame, done: pd.DataFrame, *, n_boot: int, seed: int):
    if not {"optimizer", "lr"} <= set(df.columns) or len(done) == 0:
        rep.skip("optimizer comparison", "no optimizer / lr columns")
        return
    n_opt = done["optimizer"].nunique()
    lr_counts = done.groupby(["optimizer", done["N"].map(_sig)])["lr"].nunique()
    has_grid = bool((lr_counts >= 3).any())
    if n_opt < 2 and not has_grid:
        rep.skip("optimizer comparison", f"{n_opt} optimizer and no learning-rate grid "
                 "(need >= 2 optimizers or >= 3 learning rates at some size)")
        return
    df = df[df["status"].isin(["done", "diverged"])]
    if n_opt >= 2:
        # compare optimizers on the (N, D) cells that several optimizers ran: runs of one
        # optimizer elsewhere (an IsoFLOP sweep in the same table, say) are not comparable
        # (a diverged run stopped early: its cell is the D it was planned to train)
        d_cell = df["D_planned"].fillna(df["D"]) if "D_planned" in df else df["D"]
        key = df["N"].map(lambda v: _sig(v, 4)).astype(str) + "|" + d_cell.map(lambda v: _sig(v, 4)).astype(str)
        per = df.assign(_k=key).groupby("_k")["optimizer"].nunique()
        shared = set(per[per >= 2].index)
        if shared:
            n_before = len(df)
            df = df[key.isin(shared)]
            if len(df) < n_before:
                lines_pre = [f"- compared on the {len(shared)} (N, D) cells run with several optimizers "
                             f"({len(df)} of {n_before} done/diverged runs)"]
            else:
                lines_pre = []
        else:
            lines_pre = ["- no (N, D) cell was run with several optimizers: the comparison mixes "
                         "different token budgets"]
    else:
        lines_pre = []
    sens = lr_sensitivity(df)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EdgeOfGridWarning)
        best = best_lr(sens)
    edge_msgs = [str(w.message) for w in caught if issubclass(w.category, EdgeOfGridWarning)]
    scal = lr_scaling(best)
    spread = seed_spread(sens)
    lines = ["## Optimizer comparison\n"] + lines_pre
    if has_grid:
        rep.figure("lr_sensitivity", "Final loss against learning rate per optimizer and size "
                   "(error bars: seed std; ×: diverged; ★: best, hollow when on the grid's edge).",
                   lambda: plots.lr_sensitivity(sens, best))
        rep.figure("best_lr", "Best learning rate against N per optimizer with fitted "
                   "lr* = c N^γ (edge-of-grid points hollow, not fitted).",
                   lambda: plots.best_lr(best, scal))
    bt = pd.DataFrame({
        "optimizer": best["optimizer"], "N": best["N"], "best lr (grid)": best["lr_best"],
        "best lr (refined)": best["lr_refined"],
        "loss ± seed std": [f"{m:.4f} ± {s:.4f}" if np.isfinite(m) else "–"
                            for m, s in zip(best["loss"], best["loss_std"])],
        "edge of grid": best["edge_side"].replace("", "no"),
    })
    rep.table(bt, "best_lr", "Best learning rate per optimizer and size")
    st = pd.DataFrame({"optimizer": scal["optimizer"], "sizes fitted": scal["n_sizes"],
                       "γ [95% CI]": [value_ci(g, lo, hi, 3) for g, lo, hi in
                                      zip(scal["gamma"], scal["gamma_low"], scal["gamma_high"])]})
    rep.table(st, "lr_scaling", "Best learning rate against N: lr* = c N^γ")
    for r in scal.itertuples():
        if np.isfinite(r.gamma):
            lines.append(f"- {r.optimizer}: best learning rate scales as N^γ with γ = "
                         f"{value_ci(r.gamma, r.gamma_low, r.gamma_high, 3)} ({r.n_sizes} sizes).")
    for m in edge_msgs:
        lines.append(f"- warning: {m}")
        rep.warnings.append(m)
    if np.isfinite(spread):
        lines.append(f"- seed-to-seed spread (median std of the final loss over cells with several "
                     f"seeds): {spread:.4f}; loss differences below about twice this are not resolved.")
    laws = compute_laws(df, best, n_boot=n_boot, seed=seed) if n_opt >= 2 else {}
    mults = []
    if laws:
        runs = best_lr_runs(df, best)
        lt = []
        for opt, law in laws.items():
            rep.add_params(f"{opt}: L(C) at best lr", law, ["E", "x_c", "alpha"])
            lt.append({"optimizer": opt, "sizes": law.info["n_sizes"],
                       "form": "E + (C_c/C)^α" if law.irreducible else "(C_c/C)^α",
                       "α [95% CI]": value_ci(law["alpha"], *law.interval("alpha"), 3),
                       "E [95% CI]": value_ci(law["E"], *law.interval("E"), 3) if law.irreducible else "–"})
            lines.append(f"- {opt}: loss at its best learning rate falls as C^-α with α = "
                         f"{value_ci(law['alpha'], *law.interval('alpha'), 3)}.")
        rep.table(pd.DataFrame(lt), "optimizer_laws", "Loss against compute per optimizer at its best learning rate",
                  fit=list(laws.values()))
        # reference: the optimizer with the lowest predicted loss at the largest compute
        cmax = float(runs["C"].max())
        ranked = sorted(laws, key=lambda o: float(laws[o].predict(cmax)))
        ref = ranked[0]
        for o in ranked[1:]:
            m = compute_multiplier(laws, o, ref, at_compute=cmax, seed=seed)
            mults.append(m)
            lines.append(f"- to reach the loss {ref} reaches at C = {fmt(cmax, 3)} FLOPs "
                         f"({m['target_loss']:.4f}), {o} needs {fmt(m['multiplier'], 3)}× the compute "
                         f"(95% CI {fmt(m['low'], 3)}–{fmt(m['high'], 3)}).")
        rep.fits["compute_multipliers"] = mults
        if mults:
            mt = pd.DataFrame({"optimizer": [m["x"] for m in mults], "reference": [m["y"] for m in mults],
                               "at C": [m["at_compute"] for m in mults],
                               "compute multiplier [95% CI]": [value_ci(m["multiplier"], m["low"], m["high"], 3)
                                                                for m in mults]})
            rep.table(mt, "compute_multipliers", "Compute needed relative to the best optimizer, "
                      "to reach its loss at the largest compute in the sweep")
        rep.figure("optimizer_compute", "Loss against compute per optimizer at its best learning "
                   "rate (error bars: seed std) with fitted L(C) and 95% bands.",
                   lambda: plots.optimizer_compute(runs, laws, mults), fit=list(laws.values()))
        rep.findings.append(f"Optimizers: {ref} reaches the lowest loss at the largest compute; "
                            + "; ".join(f"{m['x']} needs {fmt(m['multiplier'], 3)}× "
                                        f"[{fmt(m['low'], 3)}, {fmt(m['high'], 3)}] its compute"
                                        for m in mults) + ".")
        far = [m["x"] for m in mults if m["multiplier"] > 10]
        if mults:
            note = ("- A multiplier above 1 reads the slower optimizer's fitted law beyond the "
                    "largest compute run in the sweep, so it is an extrapolation")
            if far:
                note += (f"; for {', '.join(far)} (over 10×) by more than a decade: read those "
                         "as 'far behind at this scale', not as a precise figure")
            lines.append(note + ".")
    elif n_opt >= 2:
        rep.skip("compute laws per optimizer", "fewer than 2 sizes at the best learning rate")
    rep.fits["best_lr"] = json.loads(best.to_json(orient="records"))
    rep.fits["lr_scaling"] = json.loads(scal.to_json(orient="records"))
    rep.sections.append("\n".join(lines) + "\n")


def _families_section(rep: _Report, df: pd.DataFrame, done: pd.DataFrame, source: Path, ngram,
                      *, n_boot: int, seed: int) -> None:
    """L(N) per model family with the n-gram line, and loss by token position
    (analysis/families.py); only where the table has several families, an n-gram result or
    per-position losses."""
    folder = df.attrs.get("folder")
    if folder is None and source.is_file() and (source.parent / "points").is_dir():
        folder = str(source.parent)  # a results table inside its sweep folder
    extra = [ngram] if isinstance(ngram, (str, Path)) else list(ngram or [])
    ngrams = fam.read_ngrams(*(extra or [folder]))
    ids = done["point_id"].astype(str).tolist() if "point_id" in done else []
    positions = fam.read_positions(folder, ids)
    n_fam = fam.n_families(done)
    if n_fam < 2 and ngrams.empty and not positions:
        rep.skip("model families", "one model family, no n-gram result, no per-position losses")
        return
    n_label = plots.n_axis_label(df)
    n_words = n_label[n_label.index("(") + 1:-1] if "(" in n_label else "parameters"
    fits, rows_by, notes = fam.fit_families(done, n_boot=n_boot, seed=seed)
    lines = [f"- {n}" for n in notes]
    fp = set(ngrams["corpus_fingerprint"].dropna()) if len(ngrams) else set()
    run_fp = set(done["corpus_fingerprint"].dropna().astype(str)) if "corpus_fingerprint" in done else set()
    if fp and run_fp and not fp <= run_fp:
        rep.warnings.append("an n-gram result was computed on another corpus than the runs")
        lines.append("- WARNING: an n-gram result's corpus fingerprint differs from the runs'")
    for arch, fit in fits.items():
        rep.add_params(f"L(N) {arch}", fit, ["alpha", "x_c"])
        rep.findings.append(
            f"L(N) of the {arch} family at D = {fmt(fit.info['D'], 3)}: (N_c/N)^α_N with α_N = "
            f"{value_ci(fit['alpha'], *fit.interval('alpha'), 3)} ({fit.n} sizes; N = {n_words}; "
            f"noise bootstrap, {fit.n_boot_failed} of {len(fit.samples)} replicates failed).")
    for r in ngrams.itertuples():
        rep.findings.append(
            f"{int(r.order)}-gram Kneser-Ney on the same training tokens (D = {fmt(r.D, 3)}) and "
            f"eval windows: {r.eval_loss:.4f} ± {r.eval_loss_stderr:.4f} nats/token "
            f"({fmt(r.eval_tokens, 3)} tokens in {r.eval_documents} documents; stderr "
            "cluster-robust by document).")
    # one figure compares next-token losses; a masked-LM family (the encoder's loss is on
    # masked positions, another task) is in the table but not drawn against them
    drawn = {a: r for a, r in rows_by.items() if fam.objective_of(r) == "next_token"}
    for a in rows_by:
        if a not in drawn:
            lines.append(f"- {a}: trained on the {fam.objective_of(rows_by[a])} objective, whose loss "
                         "is not comparable with next-token loss: in the table, not in the figures")
    if rows_by or len(ngrams):
        rep.table(fam.families_table(fits, rows_by, ngrams), "families", rep.cap(
            "Model families: L(N) = (N_c/N)^α_N per family at fixed D (95% noise-bootstrap "
            f"intervals; N = {n_words}), the loss of each family's largest run ± its eval stderr, "
            "and the Kneser-Ney n-gram loss ± its cluster-robust stderr on the same eval windows",
            list(fits.values())), digits=4)
        rep.figure("families", rep.cap(
            f"Eval loss against N ({n_words}) per model family at fixed D: runs (± eval stderr), "
            "the fitted (N_c/N)^α_N with its 95% band; horizontal: Kneser-Ney n-gram loss on the "
            "same tokens and eval windows (± stderr)", list(fits.values())),
            lambda: plots.families_loss_vs_n(drawn, fits, ngrams, n_label))
    if positions:
        series = []
        for arch, rows in drawn.items():
            for r in fam.pick_sizes(rows, set(positions)).itertuples():
                series.append((arch, float(r.N), positions[str(r.point_id)]))
        lines.append(f"- per-position losses: {len(positions)} runs record them; drawn: "
                     f"{len(series)} (up to 4 sizes per family)")
        rep.figure("loss_by_position", rep.cap(
            "Mean eval loss at each token position of the context window (log x), for several N "
            f"per family (colour: N, {n_words}; line style: family); dotted black: the "
            "Kneser-Ney n-gram scored on the same windows from the same in-window context"),
            lambda: plots.loss_by_position(series, ngrams, n_label))
    elif n_fam >= 2:
        rep.skip("loss by position", "no run records per-position losses "
                 "(train.eval_per_position = true)")
    rep.fits["families"] = {"ngram": json.loads(ngrams.drop(columns=["eval_loss_by_position"])
                                                .to_json(orient="records")),
                            "notes": notes}
    rep.sections.append("## Model families\n\n" + (("\n".join(lines) + "\n\n") if lines else "")
                        + (to_markdown(fam.families_table(fits, rows_by, ngrams)) + "\n"
                           if rows_by or len(ngrams) else ""))


def _write_summary(rep: _Report, elapsed: float) -> None:
    parts = [f"# Scaling-law report\n\nSource: `{rep.source}`. Generated by "
             f"`analysis.report.analyze` in {elapsed:.1f} s.\n"]
    parts.append(rep.sections[0])
    parts.append("## Findings\n")
    if rep.findings:
        parts.append("\n".join(f"- {f}" for f in rep.findings) + "\n")
    else:
        parts.append("No fit could be made (see Skipped).\n")
    for s in rep.sections[1:]:
        parts.append(s)
    if rep.param_rows:
        parts.append("## Fitted parameters\n\n95% intervals: bootstrap percentiles; the "
                     "`intervals` column says which bootstrap (noise: design fixed, each run's loss "
                     "perturbed by its measured noise; cases: runs resampled) and how many replicates "
                     f"failed. {rep.convention}; eval set: {rep.eval_set}. A parameter the data do not "
                     "identify shows its estimate and a one-sided bound, never an interval.\n\n"
                     + to_markdown(_params_table(rep.param_rows)))
    if rep.figures:
        parts.append("## Figures\n")
        for name, cap in rep.figures:
            parts.append(f"![{cap}](figures/{name}.png)\n\n*{name}*: {cap} "
                         f"([PDF](figures/{name}.pdf))\n")
    if rep.tables:
        parts.append("## Tables\n\n" + "\n".join(
            f"- `tables/{n}.md` / `tables/{n}.tex`: {c}" for n, c in rep.tables) + "\n")
    parts.append("## Skipped\n")
    if rep.skipped:
        parts.append("\n".join(f"- {w}: {why}" for w, why in rep.skipped) + "\n")
    else:
        parts.append("Nothing.\n")
    parts.append(
        "## Method\n\n"
        "Laws are fitted to log loss with a Huber loss (δ = 1e-3) by batched L-BFGS from grids of "
        "starts (Approach 3: Hoffmann et al.'s 4,500), keeping the best; the optimiser stops on a "
        "relative criterion, so the result does not depend on the loss's scale. Intervals are 95% "
        "bootstrap percentiles; for designed sweeps (and wherever the loss's noise is measured) "
        "the bootstrap keeps the design fixed and perturbs each run's loss by its noise, and "
        "failed replicates are counted, never dropped silently. Power laws on a Pareto front "
        "and the learning-curve frontier use the case bootstrap: a front is a selection of the "
        "lowest losses, not a design, and perturbing the losses and re-taking the minimum would "
        "bias it downwards. IsoFLOP minima: global parabola "
        "in log N (default: least biased and best-covered in benchmarks/coverage.py), with the "
        "Akima-interpolant argmin and a local parabola reported beside it; the exponent is a "
        "weighted fit over the budgets that bracket their minimum (fewer than 3: not determined). "
        "Approach 3 flags parameters at a bound (E ~ 0, an exponent at the grid's edge) as not "
        "identified and refits the model without E. "
        "Approach 1 uses the run attaining the frontier at each FLOP value (bootstrap over runs).\n")
    (rep.out / "summary.md").write_text("\n".join(parts))
