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
- critical batch size (analysis/report/batch.py): a ``batch_size`` column with >= 3 batch sizes
  (B in tokens = batch_size x seq_len) and learning curves.

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
identify (analysis/fits/chinchilla.py, analysis/fits/powerlaw.py) are printed with a one-sided bound,
and what depends on them is marked conditional; an IsoFLOP exponent from fewer than 3
bracketed budgets is "not determined".

This module loads the table, writes the Data section and calls one module of this package
per section, in the order of summary.md: powerlaws (L(N), L(D), L(C)), parametric
(Approach 3, Kaplan), isoflop (Approach 2), curves (frontier, Approach 1), predictions
(optimal allocation, predictions), backtest (does the law extrapolate?), analysis.validation
(does the prediction hold?), optimizers, families, batch (critical batch size),
analysis.emergence (task abilities);
writer holds what they add to and writes summary.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import emergence, validation
from analysis.report import backtest as report_backtest
from analysis.report import batch as report_batch
from analysis.report import curves as report_curves
from analysis.report import families as report_families
from analysis.report import isoflop as report_isoflop
from analysis.report import optimizers as report_optimizers
from analysis.report import parametric as report_parametric
from analysis.report import powerlaws as report_powerlaws
from analysis.report import predictions as report_predictions
from analysis.branches import TRUNK_NOTE, compute_spent, compute_text
from analysis.fitrows import select_fit_rows
from analysis.followups import added_points, added_points_section
from analysis.load import describe_dropped, load_results
from analysis.noise import noise_model
from analysis.report.writer import Report, c_label, params_table, write_summary
from analysis.result import fmt, json_default


def default_out_dir(source: str | Path) -> Path:
    p = Path(source)
    if p.is_dir():
        return p / "report"
    if p.name in ("results.csv", "results.parquet"):
        return p.parent / "report"
    return p.with_name(p.stem + "_report")


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
    seed_corr: float = 1.0,
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
    rep = Report(out, str(source))
    status_counts = df["status"].value_counts().to_dict()
    if spent is not None:
        rep.fits["compute"] = spent

    rows, sel_notes = sel.rows, sel.notes
    noise = noise_model(rows, df.attrs.get("folder"), seed_noise=seed_noise,
                        seed_corr=seed_corr) if len(rows) else None
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

    # each section adds its findings, figures, tables and fits to `rep`, or says why it is skipped
    pl_fits = report_powerlaws.section(rep, df, rows, n_boot=n_boot, seed=seed, pl_loss=pl_loss)
    a3 = report_parametric.section(rep, df, rows, n_boot=n_boot, seed=seed, loss_fn=loss_fn,
                                   boot=boot, noise=noise, measured=measured)
    iso = report_isoflop.section(rep, rows, n_boot=n_boot, seed=seed, noise=noise, measured=measured)
    frontier, a1 = report_curves.section(rep, df, done, source, roles, trunk_table, n_trunks,
                                         n_boot=n_boot, seed=seed, pl_loss=pl_loss)
    report_predictions.section(rep, df, rows, a3=a3, iso=iso, a1=a1, frontier=frontier,
                               pl_fits=pl_fits, predict_C=predict_C)
    if len(rows):  # "Does the law extrapolate?" (analysis/report/backtest.py)
        report_backtest.section(rep, rows, n_boot=n_boot, seed=seed, boot=boot,
                                noise=noise if measured else None, c_label=c_label(df))
    # "Does the prediction hold? (a 10x run)": runs of followup.validate (analysis/validation.py)
    validation.add_to_report(rep, sel.validation, a3, df.attrs.get("folder"))

    # ---------------------------------------------------------------- optimizers
    report_optimizers.section(rep, df, done, n_boot=n_boot, seed=seed)

    # ---------------------------------------------------------------- model families
    report_families.section(rep, df, done, source, ngram, n_boot=n_boot, seed=seed)
    # ---------------------------------------------------------------- critical batch size
    report_batch.section(rep, df, source, n_boot=n_boot, seed=seed)
    # ---------------------------------------------------------------- task abilities
    if len(done) and emergence.subtasks(done):  # task/<sub-task>/<metric> columns (data.tasks)
        emergence.section(rep, done, n_boot=n_boot, seed=seed)

    # ---------------------------------------------------------------- write
    if rep.param_rows:
        rep.table(params_table(rep.param_rows), "parameters",
                  "Fitted parameters with 95% bootstrap percentile intervals")
    (out / "fits.json").write_text(json.dumps(rep.fits, indent=2, default=json_default))
    for name, error in rep.writer.wait().items():  # a figure must never sink the report
        rep.figures = [f for f in rep.figures if f[0] != name]
        rep.skip(f"figure `{name}`", error)
    write_summary(rep, time.time() - t0)
    return out
