"""Steps and tokens to reach a target loss, per run and batch size, and the critical batch
size of each optimizer at each target (McCandlish et al. 2018; Kaplan et al. 2020 sec. 5.1).

B is the batch in TOKENS per optimizer step: batch_size (sequences) x seq_len. E = B S.

Per run and target (:func:`steps_to_target`): S is the first crossing of the target on the
learning curve (Shallue et al. 2018's rule), interpolated linearly in log step between the
two evaluations around it. The curve is the eval loss (held-out per-token loss, the
``eval_loss`` rows of curves.parquet) by default, or the training loss smoothed as
analysis/load.py smooths it (``loss="train"``). A run that never reaches the target is
CENSORED; one already below it at its first evaluation is LEFT-CENSORED (S is only at most
that step); both are counted per target and neither enters a fit.

Per (arm, target), an arm being one optimizer (and model size, when the table has several):
at each batch size the learning rate with the fewest steps (seeds of one lr: their median,
a censored seed counting as infinitely many steps), flagged when it is the smallest or
largest lr of that batch's grid; then S(B) = S_min + E_min / B across the batch sizes that
reach the target (analysis/fits/critical_batch.py, >= 3 needed, else the reason), and per
arm B_crit(L) = B* / L^(1/alpha_B) across targets.

Default targets (:func:`default_targets`): L_low is the lowest loss that at least 2/3 of the
(arm, batch size) cells reach (at any of their learning rates); five targets evenly spaced
in log loss from 1.2 L_low down to L_low, leaving out any at or above the median first-eval
loss of the runs.

Where the results carry ``noise_scale_b_simple`` (McCandlish's simple noise scale in tokens,
averaged over each run's last half), each target shows the median over the arm's runs that
end within 2 % of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fits.critical_batch import MIN_BATCHES, BcritLaw, fit_bcrit_law, fit_critical_batch
from analysis.result import fmt

LOSSES = ("eval", "train")
N_TARGETS = 5
REACH_SHARE = 2 / 3
SPAN = 1.2
B_SIMPLE_COL = "noise_scale_b_simple"
LOSS_WORDS = {"eval": "eval loss (held-out per-token loss, the eval_loss curve)",
              "train": "training loss (smoothed over 1/20 of each run)"}


def steps_to_target(step, loss, target: float) -> tuple[float, str]:
    """(S, state): state "reached" (S interpolated linearly in log step between the last
    evaluation above the target and the first at or below it), "censored" (never reached:
    S NaN) or "first_eval" (at or below it at the first evaluation: S is that step, an upper
    bound only)."""
    step = np.asarray(step, dtype=float)
    loss = np.asarray(loss, dtype=float)
    ok = np.isfinite(step) & np.isfinite(loss) & (step > 0)
    step, loss = step[ok], loss[ok]
    order = np.argsort(step, kind="stable")
    step, loss = step[order], loss[order]
    hit = np.flatnonzero(loss <= target)
    if hit.size == 0:
        return math.nan, "censored"
    i = int(hit[0])
    if i == 0:
        return float(step[0]), "first_eval"
    s0, s1, l0, l1 = step[i - 1], step[i], loss[i - 1], loss[i]
    t = (l0 - target) / (l0 - l1)
    return float(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))), "reached"


def add_batch_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """``B_tokens`` = batch_size x seq_len and the ``arm`` label (optimizer, plus N when the
    optimizer has several sizes); ValueError naming what is missing."""
    for col in ("batch_size", "seq_len"):
        if col not in runs:
            raise ValueError(f"no column {col!r}: the batch in tokens is batch_size x seq_len")
    r = runs.copy()
    r["B_tokens"] = pd.to_numeric(r["batch_size"], errors="coerce") * pd.to_numeric(r["seq_len"], errors="coerce")
    opt = r["optimizer"].astype(str) if "optimizer" in r else pd.Series("all", index=r.index)
    arm = opt.copy()
    if "N" in r:
        for o in opt.unique():
            m = opt == o
            if r.loc[m, "N"].nunique() > 1:
                arm[m] = o + ", N=" + r.loc[m, "N"].map(lambda v: fmt(float(v), 3))
    r["arm"] = arm
    r["lr"] = pd.to_numeric(r["lr"], errors="coerce") if "lr" in r else 1.0
    return r


def run_steps(runs: pd.DataFrame, curves: pd.DataFrame, targets) -> pd.DataFrame:
    """One row per (run, target): S, E = B S (tokens) and the state (reached, censored,
    first_eval, no_curve)."""
    by = {pid: c for pid, c in curves.groupby("point_id", sort=False)} if len(curves) else {}
    rows = []
    for r in runs.itertuples(index=False):
        c = by.get(r.point_id)
        for t in targets:
            if c is None or not len(c):
                s, st = math.nan, "no_curve"
            else:
                s, st = steps_to_target(c["step"], c["loss"], t)
            rows.append({"point_id": r.point_id, "arm": r.arm, "B_tokens": r.B_tokens, "lr": r.lr,
                         "seed": getattr(r, "seed", 0), "target": t, "S": s,
                         "E": s * r.B_tokens if st == "reached" else math.nan, "state": st})
    return pd.DataFrame(rows)


def best_per_batch(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, target, batch): the lr with the fewest steps (seeds: median, censored =
    inf), whether it is at the edge of the batch's lr grid, and the batch's state."""
    out = []
    for (arm, t, b), g in steps.groupby(["arm", "target", "B_tokens"], sort=True):
        s = g["S"].where(g["state"] == "reached", np.inf)
        per_lr = s.groupby(g["lr"]).median()
        lrs = np.sort(per_lr.index.to_numpy(float))
        lr_best = float(per_lr.idxmin())
        S = float(per_lr.min())
        state = "reached" if np.isfinite(S) else (
            "first_eval" if (g["state"] == "first_eval").any() else "censored")
        edge = "" if len(lrs) < 2 or lrs[0] < lr_best < lrs[-1] else (
            "low" if lr_best == lrs[0] else "high")
        out.append({"arm": arm, "target": t, "B_tokens": b, "S": S if state == "reached" else math.nan,
                    "E": S * b if state == "reached" else math.nan, "lr_best": lr_best,
                    "n_lrs": len(lrs), "edge": edge if state == "reached" else "", "state": state,
                    "n_runs": len(g), "n_censored": int((g["state"] == "censored").sum()),
                    "n_first_eval": int((g["state"] == "first_eval").sum())})
    return pd.DataFrame(out)


def default_targets(runs: pd.DataFrame, curves: pd.DataFrame, n: int = N_TARGETS) -> tuple[list[float], str]:
    """The module docstring's rule; ([], why) when the curves give no target."""
    if not len(curves):
        return [], "no learning curves"
    lowest = curves.groupby("point_id")["loss"].min()
    first = curves.sort_values("step").groupby("point_id")["loss"].first()
    r = runs.assign(low=runs["point_id"].map(lowest)).dropna(subset=["low"])
    cells = r.groupby(["arm", "B_tokens"])["low"].min().sort_values()
    if not len(cells):
        return [], "no run has a curve"
    k = max(1, math.ceil(REACH_SHARE * len(cells)))
    lo = float(cells.iloc[k - 1])
    top = float(np.median(first.loc[first.index.isin(r["point_id"])]))
    ts = np.exp(np.linspace(math.log(SPAN * lo), math.log(lo), n))
    ts = [float(f"{t:.4g}") for t in ts if t < top]
    rule = (f"{len(ts)} targets evenly spaced in log loss from {SPAN} L_low to L_low = {lo:.4g}, the "
            f"lowest loss that {k} of the {len(cells)} (arm, batch) cells (>= 2/3) reach; none at "
            f"or above the median first-eval loss ({top:.4g})")
    return ts, rule


@dataclass
class ArmResult:
    """One arm's targets (each a fit or the reason it is not fitted), its B_crit(L) law."""

    arm: str
    targets: list[dict] = field(default_factory=list)  # target, counts, fit | reason, b_simple
    law: BcritLaw | None = None
    law_reason: str = ""
    b_simple: pd.DataFrame | None = None  # point_id, loss, B_simple per run


@dataclass
class BatchAnalysis:
    arms: dict[str, ArmResult]
    steps: pd.DataFrame
    best: pd.DataFrame
    targets: list[float]
    targets_rule: str
    loss: str
    n_boot: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        arms = {}
        for a, ar in self.arms.items():
            ts = []
            for t in ar.targets:
                d = {k: v for k, v in t.items() if k != "fit"}
                if t.get("fit") is not None:
                    d["fit"] = t["fit"].to_dict()
                ts.append(d)
            arms[a] = {"targets": ts, "law": ar.law.to_dict() if ar.law else None,
                       "law_reason": ar.law_reason or None}
        return {"units": "B and B_crit in tokens per step (batch_size x seq_len); S in steps; "
                         "E = B S tokens", "loss": LOSS_WORDS[self.loss], "targets": self.targets,
                "targets_rule": self.targets_rule, "lr_rule": LR_RULE,
                "bootstrap": BOOT_WORDS.format(n=self.n_boot), "notes": self.notes, "arms": arms}

    def describe(self) -> str:
        lines = [f"critical batch size: {LOSS_WORDS[self.loss]}; B in tokens (batch_size x seq_len)",
                 f"targets: {self.targets_rule}", f"per batch: {LR_RULE}",
                 f"intervals: {BOOT_WORDS.format(n=self.n_boot)}"] + self.notes
        for a, ar in self.arms.items():
            lines.append(f"\n{a}:")
            for t in ar.targets:
                head = (f"  L = {t['target']:.4g}: {t['n_batches']} of {t['n_batches_total']} batch "
                        f"sizes reach it; runs censored {t['n_censored']}, below at first eval "
                        f"{t['n_first_eval']}")
                lines.append(head)
                f = t.get("fit")
                if f is None:
                    lines.append(f"    not fitted: {t['reason']}")
                    continue
                sm = f.ci.get("S_min", (math.nan, math.nan))
                em = f.ci.get("E_min", (math.nan, math.nan))
                lines.append(f"    {f.describe()}; S_min = {fmt(f.S_min, 3)} [{fmt(sm[0], 3)}, "
                             f"{fmt(sm[1], 3)}] steps, E_min = {fmt(f.E_min, 3)} [{fmt(em[0], 3)}, "
                             f"{fmt(em[1], 3)}] tokens; {f.n_failed} of {f.n_boot} replicates failed"
                             + (f"; best lr at its grid's edge for {t['n_edge']} batch size(s)"
                                if t["n_edge"] else "")
                             + (f"; B_simple (runs ending within 2 %) {fmt(t['b_simple'], 3)}"
                                if t.get("b_simple") is not None and math.isfinite(t["b_simple"]) else ""))
            if ar.law is not None:
                lines.append("  " + law_text(ar.law))
            else:
                lines.append(f"  B_crit(L) not fitted: {ar.law_reason}")
        return "\n".join(lines)


LR_RULE = ("the learning rate with the fewest steps to the target at that batch size (seeds: "
           "median); flagged when it is its grid's smallest or largest")
BOOT_WORDS = ("95 % residual bootstrap in log S over the batch sizes ({n} replicates; a replicate "
              "at S_min = 0 gives B_crit = inf); B_crit(L) from the same replicate of every target")


def law_text(law: BcritLaw) -> str:
    lo, hi = law.alpha_interval()
    p = law.ci.get("inv_alpha", (math.nan, math.nan))
    bs = law.ci.get("B_star", (math.nan, math.nan))
    a = (f"alpha_B = {law.alpha_B:.3g} [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else
         f"alpha_B = {law.alpha_B:.3g} (1/alpha_B = {law.inv_alpha:.3g} [{p[0]:.3g}, {p[1]:.3g}] "
         "includes 0: not bounded)")
    return (f"B_crit(L) = B* / L^(1/alpha_B): {a}, B* = {fmt(law.B_star, 3)} [{fmt(bs[0], 3)}, "
            f"{fmt(bs[1], 3)}] tokens ({len(law.losses)} targets; {law.n_failed} of {law.n_boot} "
            "replicates failed)")


def analyze_batch(runs: pd.DataFrame, curves: pd.DataFrame, targets=None, *, loss: str = "eval",
                  n_boot: int = 1000, seed: int = 0) -> BatchAnalysis:
    """The whole analysis on a results table (one row per run) and its prepared curves
    (``loss`` and ``loss_source`` columns, analysis/load.py's prepare_curves)."""
    notes = []
    runs = add_batch_columns(runs)
    if "role" in runs and (runs["role"] == "trunk").any():
        notes.append(f"{int((runs['role'] == 'trunk').sum())} cooldown trunk run(s) left out")
        runs = runs[runs["role"] != "trunk"]
    want = "eval_loss" if loss == "eval" else "train_loss"
    if len(curves) and "loss_source" in curves:
        wrong = curves.loc[~curves["loss_source"].astype(str).str.startswith(want), "point_id"].unique()
        if len(wrong):
            notes.append(f"{len(wrong)} run(s) without a {want} curve left out")
            curves = curves[~curves["point_id"].isin(set(wrong))]
    if targets is None:
        targets, rule = default_targets(runs, curves)
    else:
        targets = [float(t) for t in targets]
        rule = "given: " + ", ".join(f"{t:.4g}" for t in targets)
    steps = run_steps(runs, curves, targets)
    best = best_per_batch(steps) if len(steps) else pd.DataFrame()
    rng = np.random.default_rng(seed)
    arms = {}
    for arm, g_runs in runs.groupby("arm", sort=True):
        ar = ArmResult(arm=arm)
        all_b = np.sort(g_runs["B_tokens"].dropna().unique())
        U = rng.random((n_boot, len(all_b))) if n_boot > 0 else None
        ar.b_simple = _b_simple(g_runs)
        fits = []
        for t in targets:
            g = best[(best["arm"] == arm) & (best["target"] == t)] if len(best) else best
            st = steps[(steps["arm"] == arm) & (steps["target"] == t)]
            ok = g[g["state"] == "reached"].sort_values("B_tokens")
            rec = {"target": t, "n_batches": int(len(ok)), "n_batches_total": int(len(all_b)),
                   "n_censored": int((st["state"] == "censored").sum()),
                   "n_first_eval": int((st["state"] == "first_eval").sum()),
                   "n_no_curve": int((st["state"] == "no_curve").sum()),
                   "batches_censored": [float(b) for b in g.loc[g["state"] == "censored", "B_tokens"]],
                   "n_edge": int((ok["edge"] != "").sum()), "b_simple": _b_simple_near(ar.b_simple, t),
                   "fit": None, "reason": ""}
            if len(ok) < MIN_BATCHES:
                rec["reason"] = (f"{len(ok)} batch size(s) reach it (need >= {MIN_BATCHES}; "
                                 f"{len(all_b) - len(ok)} of {len(all_b)} do not: censored or "
                                 "below it at their first eval)")
            else:
                cols = np.searchsorted(all_b, ok["B_tokens"].to_numpy(float))
                rec["fit"] = fit_critical_batch(ok["B_tokens"], ok["S"], n_boot=n_boot, seed=seed,
                                                uniforms=U[:, cols] if U is not None else None)
            ar.targets.append(rec)
            fits.append((t, rec["fit"]))
        done = [(t, f) for t, f in fits if f is not None]
        try:
            ar.law = fit_bcrit_law([t for t, _ in done], [f for _, f in done])
        except ValueError as exc:
            ar.law_reason = str(exc)
        arms[arm] = ar
    return BatchAnalysis(arms=arms, steps=steps, best=best, targets=list(targets), targets_rule=rule,
                         loss=loss, n_boot=n_boot, notes=notes)


def _b_simple(runs: pd.DataFrame) -> pd.DataFrame | None:
    if B_SIMPLE_COL not in runs:
        return None
    v = pd.to_numeric(runs[B_SIMPLE_COL], errors="coerce")
    loss = pd.to_numeric(runs.get("final_eval_loss", runs.get("loss")), errors="coerce")
    m = np.isfinite(v) & (v > 0) & np.isfinite(loss)
    if not m.any():
        return None
    return pd.DataFrame({"point_id": runs.loc[m, "point_id"], "loss": loss[m], "B_simple": v[m],
                         "B_tokens": runs.loc[m, "B_tokens"]})


def _b_simple_near(bs: pd.DataFrame | None, target: float) -> float | None:
    if bs is None:
        return None
    near = bs[(bs["loss"] - target).abs() <= 0.02 * target]
    return float(near["B_simple"].median()) if len(near) else math.nan


def batch_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs every batch analysis reads (the CLI and the report alike): done and
    diverged ones. A diverged run is a run that did not reach the targets after its
    divergence: it is censored there, never left out silently."""
    return df[df["status"].isin(["done", "diverged"])].copy()


def load_batch_tables(source, loss: str = "eval", accounting: str | None = None):
    """(runs, prepared curves) of a sweep folder or its results table; ValueError /
    FileNotFoundError naming what is missing (no batch_size column, no curves)."""
    from analysis.load import load_curves, load_results

    if loss not in LOSSES:
        raise ValueError(f"--loss: {loss!r}; allowed: {', '.join(LOSSES)}")
    df = load_results(source, accounting=accounting)
    if "batch_size" not in df:
        raise ValueError(f"{source}: no column 'batch_size' (a batch-size sweep needs one)")
    runs = batch_runs(df)
    if "point_id" not in runs:
        raise ValueError(f"{source}: no column 'point_id' to join the learning curves on")
    runs = add_batch_columns(runs)
    nb = runs["B_tokens"].dropna().nunique()
    if nb < MIN_BATCHES:
        raise ValueError(f"{source}: {nb} batch size(s) among the done runs (need >= {MIN_BATCHES} "
                         "to fit S(B) = S_min + E_min / B)")
    curves = load_curves(Path(source), results=runs, prefer="eval" if loss == "eval" else "train",
                         min_evals=1)
    if curves is None or not len(curves):
        raise FileNotFoundError(f"{source}: no learning curves (curves.parquet / curves.csv beside "
                                "the results table)")
    return runs, curves
