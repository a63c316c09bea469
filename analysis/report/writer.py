"""The report being written: :class:`Report` gathers the figures, tables, findings, sections,
fits and fitted-parameter rows of ``analyze`` (analysis/report/build.py), each caption carrying the
table's conventions (compute accounting, eval set, which bootstrap made the intervals);
:func:`write_summary` writes them as summary.md. Also the small text helpers the report's
sections share (a parameter or a bootstrap in words, the compute axis's label).
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import pandas as pd

from analysis.result import fmt
from analysis.figures.style import FigureWriter
from analysis.report.tables import to_markdown, value_ci, write_table


def param_text(fit, k: str, digits: int = 4) -> str:
    """A parameter's value, or what can be said of it when the data do not identify it."""
    if k in fit.unidentified:
        b = fit.bounds.get(k)
        return f"{k} (not identified{'; ' + k + ' ≤ ' + fmt(b[1], 3) if b else ''})"
    return fmt(fit.params[k], digits)


def boot_text(fit) -> str:
    if fit.samples is None or not len(fit.samples):
        return "no bootstrap"
    how = "noise bootstrap" if str(fit.info.get("bootstrap", "")).startswith("noise") else "case bootstrap"
    out = f"{how}, {len(fit.samples)} replicates, {fit.n_boot_failed} failed"
    if fit.n_boot_failed > 0.1 * len(fit.samples):
        out += " (the interval is over the successful replicates only: treat it as unreliable)"
    return out


class Report:
    """What the report holds so far; the section modules (analysis/report_*.py) add to it."""

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
                                    "bootstrap": boot_text(fit)})


def c_label(df: pd.DataFrame) -> str:
    """Axis label of the compute column under the table's accounting."""
    acc = df.attrs.get("accounting")
    if acc == "total":
        return "compute C = C_exact (FLOPs)"
    if acc == "kaplan":
        return "compute C = 6 N D (FLOPs, Kaplan N)"
    return f"compute C (FLOPs, column {df.attrs.get('columns', {}).get('C')})"


def params_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        est = ("not determined" if not math.isfinite(r["estimate"]) else
               fmt(r["estimate"], 4) if r["note"].startswith("not identified") else
               value_ci(r["estimate"], r["ci_low"], r["ci_high"]))
        out.append({"fit": r["fit"], "parameter": r["parameter"], "estimate [95% CI]": est,
                    "note": r["note"], "intervals": r["bootstrap"]})
    return pd.DataFrame(out)


def write_summary(rep: Report, elapsed: float) -> None:
    """summary.md: the Data section, the findings, every other section, the fitted
    parameters, figures, tables, what was skipped and the method."""
    parts = [f"# Scaling-law report\n\nSource: `{rep.source}`. Generated by "
             f"`analysis.report.build.analyze` in {elapsed:.1f} s.\n"]
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
                     + to_markdown(params_table(rep.param_rows)))
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
