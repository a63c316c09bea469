"""Task abilities across scale, and whether an apparent jump is the metric's doing.

Wei et al. (2022) report abilities that appear abruptly with scale; Schaeffer et al. (2023)
show that much of the abruptness comes from the metric: exact match of an L-token answer
behaves like p^L when per-token accuracy p improves smoothly. Input: a results table with
`task/<sub-task>/<metric>` columns (scaling/train/taskeval.py writes them: exact_match,
token_accuracy, edit_distance, answer_logprob, each with `_stderr`, plus answer_tokens and
n). Per sub-task, over the done runs (one row per run; x = the table's C or N):

- `token_accuracy` is fitted as a logistic in log10 x, p = 1 / (1 + exp(-(a + b log10 x))),
  weighted by its stderr (floored at 0.005);
- `edit_distance` and `answer_logprob` are fitted as straight lines in log10 x (weighted);
- `exact_match` is not fitted: it is *predicted* from per-token accuracy as p^L (L = mean
  answer length in tokens, its closing end-of-text token included), per run from the
  observed p and along the fitted p(x); and, where the table has it, compared with
  `exact_match_independent`, the product of the per-position accuracies (p^L with the
  pooled p counts an easy closing token as evidence about the hard digits).

Intervals: a parametric bootstrap (each run's value perturbed by its stderr, refitted;
n_boot replicates; 2.5/97.5 percentiles).

Exact match against its predictions, per run, from what the task eval recorded over the
instances (scaling/train/taskstats.py): EM - prod p_j and EM - p^L with a *paired* bootstrap over
instances (EM and the prediction recomputed from the same resampled instances, so the
interval carries their strong positive correlation), and a permutation test of independent
token errors (each answer position's hits permuted across instances: EM's exact null
distribution given the p_j). Adding the two variances instead, as an earlier version did,
gave a test with almost no power (mean z^2 0.38 / 0.13 / 0.02 at p = 0.5 / 0.8 / 0.95
under independence, n = 200, L = 3, where 1 is due; no rejection in 500 datasets); the
permutation test has its nominal size, and the paired bootstrap's p-value does not where
few instances carry the difference (benchmarks/emergence_size.py). Across runs (which
share the instances, so their tests are not independent): Holm's step-down over the runs'
permutation p-values, valid under any dependence; the sub-task's p-value is the smallest
Holm-adjusted one, min(1, R x the smallest p). Verdict per sub-task: "consistent with independent errors at each position's accuracy"
if no run departs at the 5 % level after Holm, else in which direction and at which runs.
EM - p^L is descriptive (pooling an easy closing token with hard digits puts p^L above EM
even with independent errors): the report gives its paired 95 % intervals and the runs
whose interval excludes 0. And the largest rise of EM between neighbouring sizes against
the rise each prediction gives there. A table without the paired columns (written before
scaling/train/taskstats.py) gets no test: its old z said nothing, and the hits it would need are
not in the table.

Never imports scaling/ (the rule of analysis/).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy import optimize

METRICS = ("exact_match", "token_accuracy", "edit_distance", "answer_logprob")
LABELS = {"exact_match": "exact match", "token_accuracy": "per-token accuracy (teacher-forced)",
          "edit_distance": "token edit distance (greedy)",
          "answer_logprob": "log p(answer) (nats)"}
_SE_FLOOR = {"token_accuracy": 0.005, "edit_distance": 0.01, "answer_logprob": 0.01}


def subtasks(df: pd.DataFrame) -> list[str]:
    """Sub-tasks with an exact_match column, in natural order (addition_2 before _10)."""
    subs = {c.split("/")[1] for c in df.columns
            if c.startswith("task/") and c.endswith("/exact_match")}
    return sorted(subs, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def task_of(sub: str) -> str:
    """'addition_3' -> 'addition'; 'copy' -> 'copy'."""
    return re.sub(r"_\d+$", "", sub)


def frame(done: pd.DataFrame, sub: str) -> pd.DataFrame:
    """One row per run with a finite exact match: N, C, each metric and its stderr, L, n."""
    out = pd.DataFrame({"N": pd.to_numeric(done["N"], errors="coerce"),
                        "C": pd.to_numeric(done["C"], errors="coerce"),
                        "label": done["label"] if "label" in done else ""})
    for m in METRICS + ("exact_match_independent", "answer_tokens", "n"):
        col = f"task/{sub}/{m}"
        out[m] = pd.to_numeric(done[col], errors="coerce") if col in done else np.nan
        if m in METRICS or m == "exact_match_independent":
            se = f"{col}_stderr"
            out[m + "_se"] = pd.to_numeric(done[se], errors="coerce") if se in done else np.nan
    for m in ("exact_match_excess_positions", "exact_match_excess_pl"):
        for s in ("", "_stderr", "_lo", "_hi") + (("_p",) if m.endswith("positions") else ()):
            col = f"task/{sub}/{m}{s}"
            out[m + s] = pd.to_numeric(done[col], errors="coerce") if col in done else np.nan
    out = out[np.isfinite(out["exact_match"]) & (out["C"] > 0) & (out["N"] > 0)]
    return out.sort_values(["C", "N"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------


def _logistic(theta, lx):
    return 1.0 / (1.0 + np.exp(-(theta[0] + theta[1] * lx)))


def _linear(theta, lx):
    return theta[0] + theta[1] * lx


def _fit_once(kind: str, lx, y, se):
    f = _logistic if kind == "logistic" else _linear
    if kind == "logistic":
        yc = np.clip(y, 0.02, 0.98)
        A = np.vstack([np.ones_like(lx), lx]).T
        theta0 = np.linalg.lstsq(A, np.log(yc / (1 - yc)), rcond=None)[0]
    else:
        theta0 = np.polyfit(lx, y, 1)[::-1]
    res = optimize.least_squares(lambda t: (f(t, lx) - y) / se, theta0, method="lm")
    return res.x


def fit_metric(x, y, se, kind: str, *, n_boot: int = 200, seed: int = 0, grid=None) -> dict:
    """Fit `kind` ("logistic" or "linear") in log10 x, weighted by se; a parametric
    bootstrap gives the curve's 95% band on `grid`. None with fewer than 3 points."""
    x, y, se = (np.asarray(a, float) for a in (x, y, se))
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y, se = x[ok], y[ok], se[ok]
    if len(x) < 3 or len(np.unique(x)) < 3:
        return None
    se = np.where(np.isfinite(se), se, 0.0)
    lx = np.log10(x)
    f = _logistic if kind == "logistic" else _linear
    theta = _fit_once(kind, lx, y, se)
    grid = np.logspace(lx.min(), lx.max(), 60) if grid is None else np.asarray(grid, float)
    lg = np.log10(grid)
    rng = np.random.default_rng(seed)
    boots, failed = [], 0
    for _ in range(n_boot):
        yb = y + se * rng.standard_normal(len(y))
        if kind == "logistic":
            yb = np.clip(yb, 0.0, 1.0)
        try:
            boots.append(_fit_once(kind, lx, yb, se))
        except (ValueError, np.linalg.LinAlgError):
            failed += 1
    boots = np.array(boots) if boots else np.empty((0, 2))
    curves = np.array([f(b, lg) for b in boots]) if len(boots) else np.empty((0, len(grid)))
    return {"kind": kind, "theta": theta, "boots": boots, "failed": failed, "grid": grid,
            "curve": f(theta, lg), "curves": curves,
            "band": (np.percentile(curves, [2.5, 97.5], axis=0) if len(curves)
                     else np.full((2, len(grid)), np.nan)),
            "slope_ci": (np.percentile(boots[:, 1], [2.5, 97.5]) if len(boots)
                         else np.array([np.nan, np.nan]))}


def binomial_se(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Binomial stderr of a proportion p of n at p~ = (x + 1) / (n + 2) (0/n keeps an error)."""
    pt = (p * n + 1.0) / (n + 2.0)
    return np.sqrt(pt * (1 - pt) / n)


PAIRED = ("exact_match_excess_positions", "exact_match_excess_pl")


def compare_pl(fr: pd.DataFrame) -> pd.DataFrame:
    """Per run: observed exact match, the p^L prediction from its own per-token accuracy and
    the product of per-position accuracies, and EM minus each with the paired-bootstrap
    stderr and 95 % interval and the permutation p-value (NaN where the table lacks them)."""
    p, L = fr["token_accuracy"].to_numpy(), fr["answer_tokens"].to_numpy()
    em, se_p = fr["exact_match"].to_numpy(), np.nan_to_num(fr["token_accuracy_se"].to_numpy())
    col = lambda c: (fr[c].to_numpy(float) if c in fr else np.full(len(fr), np.nan))
    out = pd.DataFrame({"N": fr["N"], "C": fr["C"], "em": em,
                        "em_se": binomial_se(em, fr["n"].to_numpy()),
                        "pred": p ** L,
                        "pred_se": L * p ** (L - 1) * se_p,
                        "ind": fr["exact_match_independent"].to_numpy(),
                        "ind_se": fr["exact_match_independent_se"].to_numpy()})
    for key, c in (("d_ind", PAIRED[0]), ("d_pl", PAIRED[1])):
        for suf, s in (("", ""), ("_se", "_stderr"), ("_lo", "_lo"), ("_hi", "_hi")):
            out[key + suf] = col(c + s)
    out["p_ind"] = col(PAIRED[0] + "_p")
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error under any dependence)."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    steps = (len(p) - np.arange(len(p))) * p[order]
    adj[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adj


def verdict(cmp: pd.DataFrame) -> dict:
    """Exact match against the per-position product (permutation tests, Holm over runs) and
    against p^L (paired intervals), and the largest EM rise between neighbouring sizes."""
    dof = len(cmp)
    rises = np.diff(cmp["em"].to_numpy())
    i = int(np.argmax(rises)) if len(rises) else -1
    out: dict = {"runs": dof}
    if i >= 0:
        se = math.sqrt(cmp["em_se"].iloc[i] ** 2 + cmp["em_se"].iloc[i + 1] ** 2)
        out.update({"jump_from_C": float(cmp["C"].iloc[i]), "jump_to_C": float(cmp["C"].iloc[i + 1]),
                    "jump": float(rises[i]), "jump_se": se,
                    "jump_pred": float(cmp["pred"].iloc[i + 1] - cmp["pred"].iloc[i]),
                    "jump_pred_positions": float(cmp["ind"].iloc[i + 1] - cmp["ind"].iloc[i])})
    if not dof:
        out["text"] = "no runs"
        return out
    d_pl, lo, hi = (cmp[c].to_numpy(float) for c in ("d_pl", "d_pl_lo", "d_pl_hi"))
    if np.isfinite(lo).any():
        out.update({"mean_excess_pl": float(np.nanmean(d_pl)),
                    "runs_above_pl": int(np.sum(lo > 0)), "runs_below_pl": int(np.sum(hi < 0)),
                    "runs_pl": int(np.isfinite(lo).sum())})
        out["text_pl"] = (f"EM - p^L {out['mean_excess_pl']:+.3f} on average; the paired 95 % "
                          f"interval lies above 0 at {out['runs_above_pl']} and below 0 at "
                          f"{out['runs_below_pl']} of {out['runs_pl']} runs")
    p = cmp["p_ind"].to_numpy(float)
    ok = np.isfinite(p)
    if not ok.any():
        out["text"] = ("not tested: the table has no paired columns (written before "
                       "scaling/train/taskstats.py), and the hit matrices the test needs are not in it")
        return out
    adj = np.full(len(p), np.nan)
    adj[ok] = holm(p[ok])
    d = cmp["d_ind"].to_numpy(float)
    rej = ok & (adj < 0.05)
    out.update({"p_value_positions": float(np.nanmin(adj)), "runs_tested": int(ok.sum()),
                "mean_excess_positions": float(np.nanmean(d)),
                "runs_above_positions": int(np.sum(rej & (d > 0))),
                "runs_below_positions": int(np.sum(rej & (d < 0))),
                "min_p_positions": float(np.nanmin(p))})
    if not rej.any():
        out["text"] = ("consistent with independent errors at each position's own accuracy "
                       "(no run departs at 5 % after Holm)")
    else:
        where = ", ".join(f"C = {c:.3g} ({x:+.3f})" for c, x in zip(cmp["C"][rej], d[rej]))
        up, down = out["runs_above_positions"], out["runs_below_positions"]
        out["text"] = (("above the position-wise product (errors cluster on the same instances)"
                        if up >= down else
                        "below the position-wise product (errors avoid each other)")
                       + f" at {where}")
    return out


# --------------------------------------------------------------------------------------
# Figure, table, report section
# --------------------------------------------------------------------------------------


def figure(task: str, subs: list[str], frames: dict, fits: dict, x: str, xlabel: str):
    """One figure per task: 4 panels (the metrics) vs x, a colour per sub-task; fits as
    lines with their 95% band; exact match with p^L predicted from per-token accuracy
    (dashed: from the fitted p(x); hollow markers: from each run's own p)."""
    from analysis.figures.style import new_figure

    fig, axes = new_figure(2, 2, width=7.2, height=5.4)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for k, sub in enumerate(subs):
        fr, col = frames[sub], cmap(k / max(1, len(subs) - 1) * 0.9)
        xs = fr[x].to_numpy()
        for ax, m in zip(axes.flat, METRICS):
            ax.errorbar(xs, fr[m], yerr=1.96 * np.nan_to_num(fr[m + "_se"]), fmt="o", ms=3.5,
                        color=col, capsize=2, lw=1, label=sub if m == "exact_match" else None)
            fit = fits.get((sub, m, x))
            if fit is not None:
                ax.plot(fit["grid"], fit["curve"], color=col, lw=1)
                ax.fill_between(fit["grid"], *fit["band"], color=col, alpha=0.15, lw=0)
        ax = axes.flat[0]
        cmp = compare_pl(fr)
        ax.plot(xs, cmp["pred"], "o", mfc="none", color=col, ms=6, mew=0.8)
        ax.plot(xs, cmp["ind"], "x", color=col, ms=5, mew=0.9)
        pfit = fits.get((sub, "token_accuracy", x))
        if pfit is not None:
            L = float(fr["answer_tokens"].mean())
            ax.plot(pfit["grid"], pfit["curve"] ** L, "--", color=col, lw=1)
            ax.fill_between(pfit["grid"], *np.percentile(pfit["curves"] ** L, [2.5, 97.5], axis=0)
                            if len(pfit["curves"]) else pfit["band"] ** L,
                            color=col, alpha=0.08, lw=0)
    for ax, m in zip(axes.flat, METRICS):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(LABELS[m], fontsize=9)
        if m in ("exact_match", "token_accuracy"):
            ax.set_ylim(-0.03, 1.03)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=7,
               title="filled: observed exact match; hollow / dashed: p^L (pooled p); "
               "x: product of per-position accuracies", title_fontsize=7)
    fig.suptitle(f"{task}: held-out instances vs {x} (error bars 95%)", fontsize=10)
    return fig


def _interval(cmp: pd.DataFrame, key: str, i: int) -> str:
    d, lo, hi = (cmp[key + s].iloc[i] for s in ("", "_lo", "_hi"))
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else f"{d:+.3f}"


def table(subs: list[str], frames: dict) -> pd.DataFrame:
    """Per sub-task and run: each metric ± stderr and p^L, as text cells."""
    rows = []
    for sub in subs:
        fr = frames[sub]
        cmp = compare_pl(fr)
        for i, r in fr.iterrows():
            rows.append({
                "task": sub, "N": r["N"], "C": r["C"],
                "exact match": f"{r['exact_match']:.3f} ± {cmp['em_se'].iloc[i]:.3f}",
                "p^L": f"{cmp['pred'].iloc[i]:.3f} ± {cmp['pred_se'].iloc[i]:.3f}",
                "Π p_j": f"{cmp['ind'].iloc[i]:.3f} ± {cmp['ind_se'].iloc[i]:.3f}",
                "EM − Π p_j [95 %]": _interval(cmp, "d_ind", i),
                "perm. p": f"{cmp['p_ind'].iloc[i]:.2g}",
                "EM − p^L [95 %]": _interval(cmp, "d_pl", i),
                "token acc.": f"{r['token_accuracy']:.3f} ± {r['token_accuracy_se']:.3f}",
                "edit dist.": f"{r['edit_distance']:.2f} ± {r['edit_distance_se']:.2f}",
                "log p(answer)": f"{r['answer_logprob']:.2f} ± {r['answer_logprob_se']:.2f}",
                "L": f"{r['answer_tokens']:.2f}", "n": int(r["n"]),
            })
    return pd.DataFrame(rows)


def analyze_tasks(done: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> dict:
    """Everything the report needs: per task its sub-tasks, frames, fits and verdicts."""
    out: dict = {"tasks": {}, "frames": {}, "fits": {}, "verdicts": {}}
    for sub in subtasks(done):
        fr = frame(done, sub)
        if len(fr) == 0:
            continue
        out["frames"][sub] = fr
        out["tasks"].setdefault(task_of(sub), []).append(sub)
        for x in ("C", "N"):
            for m, kind in (("token_accuracy", "logistic"), ("edit_distance", "linear"),
                            ("answer_logprob", "linear")):
                se = np.maximum(np.nan_to_num(fr[m + "_se"].to_numpy()), _SE_FLOOR[m])
                out["fits"][(sub, m, x)] = fit_metric(fr[x], fr[m], se, kind, n_boot=n_boot,
                                                      seed=seed)
        out["verdicts"][sub] = verdict(compare_pl(fr))
    return out


def section(rep, done: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> None:
    """The report's 'Task abilities across scale' section (analysis/report/build.py calls it when
    the table has task/ columns): one figure per task and x, a table, a finding per sub-task."""
    res = analyze_tasks(done, n_boot=n_boot, seed=seed)
    if not res["frames"]:
        return
    c_label = rep.convention or "C as the table gives it"
    lines = ["## Task abilities across scale\n",
             "Held-out task instances (disjoint from training), scored four ways: greedy exact "
             "match, teacher-forced per-token accuracy, token edit distance of the greedy output, "
             "log-probability of the correct answer. Exact match is compared with p^L, the value "
             "per-token accuracy p implies for an L-token answer if token errors were "
             f"independent (Schaeffer et al. 2023). Compute: {c_label}. Fits: per-token "
             "accuracy logistic in log C, edit distance and log-probability linear in log C; "
             f"95% bands from a parametric bootstrap ({n_boot} replicates, each run's value "
             "perturbed by its stderr). Exact match stderr: binomial at (x+1)/(n+2). Π p_j: "
             "the exact match independent token errors give with each answer position's own "
             "teacher-forced accuracy (stderr: bootstrap over instances). EM − Π p_j and EM − p^L: "
             "a paired bootstrap over instances (both recomputed from the same resampled "
             "instances; 95% percentile interval; 1,000 replicates in the task eval); perm. p: "
             "a permutation test of independent errors across answer positions (each "
             "position's hits permuted across instances), combined over runs by Holm's "
             "step-down (the runs share the instances). EM − p^L is descriptive: pooling an "
             "easy closing token with hard digits puts p^L above EM even with independent "
             "errors. Intervals and p-values carry Monte-Carlo error; point estimates do not "
             "(scaling/train/taskstats.py, size and power: benchmarks/emergence_size.py).\n"]
    fits_json = {}
    for task, subs in res["tasks"].items():
        conv = rep.convention or ""
        n_label, c_label_ = (("N_total", "C_exact") if "N_total" in conv else
                             ("non-embedding", "6ND") if "kaplan" in conv else ("", ""))
        for x, xl in (("C", f"compute C{' = ' + c_label_ if c_label_ else ''} (FLOPs)"),
                      ("N", f"parameters N{' (' + n_label + ')' if n_label else ''}")):
            rep.figure(f"emergence_{task}_{x}",
                       f"{task}: exact match, per-token accuracy, edit distance and log p(answer) of "
                       f"held-out instances vs {x}, a colour per sub-task; fitted smooth metrics "
                       "with 95% bootstrap bands; exact match predicted as p^L (dashed: from the "
                       "fitted accuracy; hollow: from each run's accuracy); error bars 95% (eval "
                       "stderr over instances)",
                       lambda t=task, s=subs, x=x, xl=xl: figure(t, s, res["frames"], res["fits"], x, xl))
        tab = table(subs, res["frames"])
        rep.table(tab, f"emergence_{task}",
                  f"{task}: metrics of held-out instances per run (± stderr over instances; exact "
                  "match ± binomial stderr at (x+1)/(n+2)); p^L: exact match predicted from "
                  "per-token accuracy")
        from analysis.report.tables import to_markdown
        lines.append(f"### {task}\n\n" + to_markdown(tab) + "\n")
        for sub in subs:
            v = res["verdicts"][sub]
            fr = res["frames"][sub]
            fit = res["fits"].get((sub, "token_accuracy", "C"))
            slope = ""
            if fit is not None:
                lo, hi = fit["slope_ci"]
                slope = (f"; per-token accuracy logistic slope {fit['theta'][1]:.2f} "
                         f"[{lo:.2f}, {hi:.2f}] per decade of C")
            jump = ""
            if "jump" in v:
                jump = (f"; largest exact-match rise {v['jump']:+.3f} ± {v['jump_se']:.3f} between "
                        f"C = {v['jump_from_C']:.3g} and {v['jump_to_C']:.3g}, p^L predicts "
                        f"{v['jump_pred']:+.3f}"
                        + (f", the per-position product {v['jump_pred_positions']:+.3f}"
                           if np.isfinite(v.get("jump_pred_positions", np.nan)) else ""))
            text = (f"{sub}: exact match {fr['exact_match'].iloc[0]:.3f} → "
                    f"{fr['exact_match'].iloc[-1]:.3f}, per-token accuracy "
                    f"{fr['token_accuracy'].iloc[0]:.3f} → {fr['token_accuracy'].iloc[-1]:.3f} over "
                    f"{len(fr)} runs; against the product of per-position accuracies: "
                    + (f"permutation tests, Holm over {v['runs_tested']} runs, p = "
                       f"{v['p_value_positions']:.2g}, mean EM − Π p_j "
                       f"{v['mean_excess_positions']:+.3f}: " if "p_value_positions" in v else "")
                    + v["text"]
                    + (f"; {v['text_pl']}" if "text_pl" in v else "")
                    + f"{jump}{slope}.")
            lines.append(f"- {text}")
            rep.findings.append("Task " + text)
            fits_json[sub] = {**v, **{f"{m}_{x}_theta": list(map(float, f["theta"]))
                                      for (s, m, x), f in res["fits"].items()
                                      if s == sub and f is not None}}
    rep.sections.append("\n".join(lines) + "\n")
    rep.fits["emergence"] = fits_json
