"""Cooldown branches against separate cosine runs (issue 12, section 1): the table.

    python benchmarks/cooldown.py --out /tmp/cooldown_bench --seeds 0 1 2   # runs the sweep
    python benchmarks/cooldown.py --sweep /tmp/cooldown_bench/cooldown     # reads a sweep

Running: `python run_sweep.py run experiments/cooldown.toml "sweep.seeds=[...]" --out DIR`
as a subprocess (3 sizes x 2 lengths; per size one constant-lr trunk branched into 1-sqrt
cooldowns over the last 20 %, beside the same 6 points as separate cosine runs).

The table, per size N and length S (steps), over the seeds that finished both arms:

- branch: final eval loss of the cooldown branch (mean over seeds, and its seed sd);
- cosine: final eval loss of the separate cosine run of the same N, S and seed (mean, sd);
- diff = branch - cosine: mean of the per-seed differences, the sd of those differences
  (the seed spread of the comparison: both arms share seed, data order and eval set, so
  this is the noise the difference is to be judged against) and its standard error
  sd / sqrt(n); "resolved" when |diff| > 2 x its standard error (with one seed, no spread
  is measured: the eval_loss_stderr of each arm is shown instead, and it overstates the
  noise of a paired difference on one eval set);
- compute: FLOPs actually spent by the trunk and its branches (trunk once + each branch's
  cooldown steps) against the same branches run separately from step 0, under the sweep's
  accounting (C_exact for "total") with C_6ND beside it.

Trunks are not results (analysis.branches): they appear only in the compute line.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.branches import annotate_roles, compute_spent  # noqa: E402
from analysis.load import load_results  # noqa: E402

SPEC = "experiments/cooldown.toml"


def run_sweep(out: Path, seeds: list[int], repo: Path) -> tuple[Path, float]:
    """Run the cooldown spec (subprocess); return (sweep folder, wall seconds)."""
    cmd = [sys.executable, "run_sweep.py", "run", SPEC, f"sweep.seeds={list(seeds)}",
           "--out", str(out), "--no-progress"]
    print("running:", " ".join(cmd), f"(in {repo})", flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=repo, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    wall = time.time() - t0
    if p.returncode != 0:
        print(f"warning: run_sweep exited {p.returncode}; tabulating what finished", file=sys.stderr)
    return out / "cooldown", wall


def load(sweep: Path) -> pd.DataFrame:
    df = load_results(sweep)
    annotate_roles(df, sweep)
    return df


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (N, steps, seed) with both a done branch and a done cosine run."""
    ok = df[df["status"] == "done"]
    key = ["N", "steps", "seed"]
    br = ok[ok["role"] == "branch"][key + ["loss", "eval_loss_stderr", "branched_at_step"]]
    co = ok[(ok["role"] != "branch") & (ok["role"] != "trunk") & (ok["schedule"] == "cosine")]
    co = co[key + ["loss", "eval_loss_stderr"]]
    return br.merge(co, on=key, suffixes=("_branch", "_cosine"))


def _sd(x: pd.Series) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def table(pr: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (N, S), g in pr.groupby(["N", "steps"], sort=True):
        d = g["loss_branch"] - g["loss_cosine"]
        n = len(g)
        se = _sd(d) / math.sqrt(n) if n > 1 else math.nan
        rows.append({
            "N": N, "steps": int(S), "k": int(g["branched_at_step"].iloc[0]), "seeds": n,
            "branch": g["loss_branch"].mean(), "branch_sd": _sd(g["loss_branch"]),
            "cosine": g["loss_cosine"].mean(), "cosine_sd": _sd(g["loss_cosine"]),
            "diff": d.mean(), "diff_sd": _sd(d), "diff_se": se,
            "stderr_eval": float(np.sqrt(g["eval_loss_stderr_branch"] ** 2
                                         + g["eval_loss_stderr_cosine"] ** 2).mean()),
            "resolved": bool(abs(d.mean()) > 2 * se) if n > 1 else None,
        })
    return pd.DataFrame(rows)


def _f(v, spec=".4f"):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def report(df: pd.DataFrame, wall: float | None) -> str:
    pr = pairs(df)
    if pr.empty:
        return "no (size, length, seed) has both a done branch and a done cosine run"
    t = table(pr)
    lines = ["branch (1-sqrt cooldown, last 20 %, from a constant-lr trunk) vs separate cosine run "
             "(to 0.1 x lr): final eval loss, mean over seeds; diff = branch - cosine per seed",
             f"{'N':>8} {'steps':>5} {'k':>4} {'seeds':>5} {'branch':>8} {'sd':>7} {'cosine':>8} "
             f"{'sd':>7} {'diff':>8} {'sd(diff)':>8} {'se(diff)':>8} {'resolved':>8}"]
    for r in t.itertuples():
        lines.append(f"{r.N:>8.4g} {r.steps:>5d} {r.k:>4d} {r.seeds:>5d} {_f(r.branch)} "
                     f"{_f(r.branch_sd):>7} {_f(r.cosine)} {_f(r.cosine_sd):>7} {_f(r.diff, '+.4f'):>8} "
                     f"{_f(r.diff_sd):>8} {_f(r.diff_se):>8} "
                     f"{'–' if r.resolved is None else ('yes' if r.resolved else 'no'):>8}")
    d = pr["loss_branch"] - pr["loss_cosine"]
    lines.append(f"all pairs: {len(pr)}; mean diff {d.mean():+.4f}, sd {_sd(d):.4f}; "
                 f"{int((d < 0).sum())} of {len(pr)} pairs have the branch lower")
    lines.append(f"eval-set noise of one arm (eval_loss_stderr, median): "
                 f"{pr['eval_loss_stderr_branch'].median():.4f} (both arms use one fixed eval set, "
                 "so it largely cancels in a paired difference)")
    unresolved = t[t["resolved"] == False]  # noqa: E712
    if t["resolved"].notna().any():
        if len(unresolved) == len(t):
            lines.append("verdict: branch and cosine agree within the seed spread at every "
                         "(size, length)")
        else:
            res = t[t["resolved"] == True]  # noqa: E712
            lines.append(f"verdict: at {len(res)} of {len(t)} (size, length) the branch and the "
                         "cosine run differ by more than twice the standard error of the "
                         "per-seed differences: "
                         + ", ".join(f"N={r.N:.3g} S={r.steps}: {r.diff:+.4f} ± {r.diff_se:.4f}"
                                     for r in res.itertuples())
                         + (" (branch lower)" if (res["diff"] < 0).all() else
                            " (branch higher)" if (res["diff"] > 0).all() else ""))
    else:
        lines.append("verdict: one seed per pair: no seed spread measured, no claim")
    sub = df[df["role"].isin(["trunk", "branch"])].copy()
    sub.attrs = dict(df.attrs)
    cs = compute_spent(sub)
    if cs is not None:
        lines.append(
            f"compute (trunks + branches, {cs['n_trunks']} trunks, {cs['n_branches']} branches, "
            f"{cs['convention']}): spent C = {cs['spent']:.3g} FLOPs (trunks {cs['trunks']:.3g} + "
            f"cooldowns {cs['cooldowns']:.3g}) vs {cs['separate']:.3g} as separate runs: "
            f"{cs['ratio']:.3f}x"
            + (f"; C_6ND {cs['spent_C_6ND']:.3g} vs {cs['separate_C_6ND']:.3g}: {cs['ratio_C_6ND']:.3f}x"
               if "spent_C_6ND" in cs else "")
            + (f" ({cs['n_not_counted']} trunk/branch rows not done, not counted)"
               if cs["n_not_counted"] else ""))
    if wall is not None:
        lines.append(f"wall time of the sweep: {wall:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sweep", type=Path, help="an existing sweep folder of experiments/cooldown.toml")
    src.add_argument("--out", type=Path, help="run the sweep into this parent folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repo", type=Path, default=ROOT,
                    help="the checkout whose run_sweep.py runs the sweep (default: this one)")
    args = ap.parse_args(argv)
    wall = None
    sweep = args.sweep
    if args.out is not None:
        sweep, wall = run_sweep(args.out, args.seeds, args.repo)
    if not (sweep / "points").is_dir() and not (sweep / "results.csv").exists():
        print(f"error: {sweep} is not a sweep folder (no points/, no results.csv)", file=sys.stderr)
        return 2
    print(report(load(sweep), wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
