"""Empirical calibration of the fits' intervals: the demo design run K times, each with a
fresh draw of every noise source the intervals claim to cover, each sweep fitted alone.

    python benchmarks/calibration.py --seeds 8                 # -> /tmp/calibration/r0..r7
    python benchmarks/calibration.py --seeds 8 --out DIR --analyze-only   # refit, no training

Replicate r trains experiments/demo.toml with train.seed = 3r (initialisation and, as
data_seed = -1 follows it, the data order), its [followup] seed points at seeds 3r+1 and
3r+2 (so no seed is shared between replicates), and data.eval_seed = r (another uniform
sample of the held-out windows: the eval-set draw). Each sweep is fitted alone
(`python -m analysis fit --law isoflop|chinchilla SWEEP`: the rows and noise model the
report uses), and the spread of its Approach 2 and
Approach 3 exponents a over the K sweeps is compared with the intervals one sweep reports:

    ratio = sd(a over sweeps) / (mean half-width of the 95 % intervals / 1.96)

A calibrated interval gives a ratio in the range the script prints (95 %, from the chi2
distribution of sd with K - 1 degrees of freedom: [0.49, 1.51] for K = 8, [0.41, 1.60] for
K = 6), and it reports how many intervals contain the mean of the K estimates and how many
bootstrap replicates failed. The last line printed is one JSON
object {"approach2": {"sd_a", "mean_halfwidth", "ratio"}, "approach3": {...}, ...}.
Sweeps already trained are skipped (run_sweep resumes), so an interrupted run can be
restarted with the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAWS = {"approach2": "isoflop", "approach3": "chinchilla"}


def train(spec: Path, out: Path, r: int, extra: list[str], workers: int | None) -> float:
    """Run replicate r's sweep (resumes when already there); return its wall time in s."""
    s = 3 * r
    cmd = [sys.executable, str(ROOT / "run_sweep.py"), "run", str(spec), f"train.seed={s}",
           f"data.eval_seed={r}", f"followup.seeds=[{s + 1},{s + 2}]", *extra,
           "--out", str(out / f"r{r}"), "--no-progress"]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.time()
    print(f"[r{r}] {' '.join(cmd[2:])}", flush=True)
    p = subprocess.run(cmd, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"replicate {r}: run_sweep exited {p.returncode}")
    return time.time() - t0


def fit_one(sweep: Path, n_boot: int, seed_corr: float | None = None) -> dict:
    """Fit one sweep alone as a user would (`python -m analysis fit --law isoflop|chinchilla
    SWEEP --json`: the rows and the noise model of `analyze`, without its figures and
    back-tests); a, its 95 % interval, and the noise model's sentence per approach."""
    out = {}
    for key, law in LAWS.items():
        cmd = [sys.executable, "-m", "analysis", "fit", "--law", law, str(sweep), "--json",
               "--n-boot", str(n_boot), "--seed", "0"]
        if seed_corr is not None:
            cmd += ["--seed-corr", str(seed_corr)]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        try:
            f = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            f = {"error": (p.stderr or p.stdout).strip()[-500:]}
        a = (f.get("params") or {}).get("a")
        ci = (f.get("ci") or {}).get("a") or [None, None]
        out[key] = {"a": a, "lo": ci[0], "hi": ci[1], "noise": f.get("noise_model"),
                    "error": f.get("error"), "estimator": (f.get("info") or {}).get("estimator"),
                    "n_boot": f.get("n_boot"), "n_boot_failed": f.get("n_boot_failed")}
    out["sentence"] = out["approach2"]["noise"] or out["approach3"]["noise"]
    return out


def _num(v) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def summarize(per: list[dict]) -> dict:
    res = {}
    for key in LAWS:
        a = np.array([_num(p[key]["a"]) for p in per])
        hw = np.array([(_num(p[key]["hi"]) - _num(p[key]["lo"])) / 2 for p in per])
        ok = np.isfinite(a)
        sd = float(np.std(a[ok], ddof=1)) if ok.sum() >= 2 else math.nan
        mhw = float(np.nanmean(hw)) if np.isfinite(hw).any() else math.nan
        mean = float(np.mean(a[ok])) if ok.any() else math.nan
        lo = np.array([_num(p[key]["lo"]) for p in per])
        hi = np.array([_num(p[key]["hi"]) for p in per])
        failed = [p[key].get("n_boot_failed") for p in per]
        k = int(ok.sum())
        res[key] = {"sd_a": sd, "mean_halfwidth": mhw, "ratio": sd / (mhw / 1.96) if mhw > 0 else math.nan,
                    "mean_a": mean, "n": k,
                    # the range a calibrated interval's ratio falls in with 95 % probability:
                    # sd^2 (k - 1) / sigma^2 ~ chi2(k - 1)
                    "ratio_95": ratio_range(k),
                    "cover_mean": int(np.sum((lo <= mean) & (mean <= hi))),
                    "boot_failed": int(sum(f for f in failed if f is not None)),
                    "boot_total": int(sum(p[key].get("n_boot") or 0 for p in per))}
    return res


def ratio_range(k: int) -> list[float]:
    """95 % range of sd / sigma over k replicates of a normal estimate (chi2, k - 1 dof)."""
    if k < 2:
        return [math.nan, math.nan]
    from scipy.stats import chi2

    return [math.sqrt(chi2.ppf(0.025, k - 1) / (k - 1)), math.sqrt(chi2.ppf(0.975, k - 1) / (k - 1))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8, help="replicates K (default 8)")
    ap.add_argument("--out", default="/tmp/calibration", help="parent folder of the replicate sweeps")
    ap.add_argument("--spec", default=str(ROOT / "experiments" / "demo.toml"))
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates per fit (the report's default)")
    ap.add_argument("--workers", type=int, default=None, help="run_sweep --workers")
    ap.add_argument("--seed-corr", type=float, default=None, metavar="RHO",
                    help="the fits' --seed-corr (default: theirs, 1: the seed noise shared in "
                         "full by the runs of one trajectory; 0: independent per run)")
    ap.add_argument("--analyze-only", action="store_true", help="fit the sweeps already in --out")
    ap.add_argument("--train-only", type=str, default=None, metavar="R,R,...",
                    help="only train these replicates (e.g. 0,4: several such processes can share the work), no fit")
    ap.add_argument("overrides", nargs="*", help="section.key=value for every point of every replicate")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        print(f"error: --seeds = {args.seeds}: need at least 2 replicates", file=sys.stderr)
        return 2
    out = Path(args.out)
    spec = Path(args.spec)
    name = None
    per, walls = [], []
    if args.train_only is not None:
        try:
            reps = [int(x) for x in args.train_only.split(",") if x.strip()]
        except ValueError:
            reps = [-1]
        if not reps or not all(0 <= r < args.seeds for r in reps):
            print(f"error: --train-only = {args.train_only}: replicate numbers in [0, {args.seeds})", file=sys.stderr)
            return 2
        for r in reps:
            print(f"[r{r}] trained in {train(spec, out, r, args.overrides, args.workers):.0f} s", flush=True)
        return 0
    fitted, unfinished = [], []
    for r in range(args.seeds):
        if not args.analyze_only:
            walls.append(train(spec, out, r, args.overrides, args.workers))
        folders = [p.parent for p in (out / f"r{r}").glob("*/spec.toml")]
        if len(folders) > 1:
            raise SystemExit(f"replicate {r}: expected one sweep folder under {out / f'r{r}'}, found {folders}")
        if not folders or not (folders[0] / "followup.json").exists():  # written when the sweep ends
            unfinished.append(r)  # only with --analyze-only: a trained replicate always has it
            continue
        name = folders[0]
        fitted.append(r)
        t0 = time.time()
        per.append(fit_one(name, args.n_boot, args.seed_corr))
        f2, f3 = per[-1]["approach2"], per[-1]["approach3"]
        print(f"[r{r}] a2 = {_num(f2['a']):.4f} [{_num(f2['lo']):.4f}, {_num(f2['hi']):.4f}]  "
              f"a3 = {_num(f3['a']):.4f} [{_num(f3['lo']):.4f}, {_num(f3['hi']):.4f}]  "
              f"(analysis {time.time() - t0:.0f} s)", flush=True)
    if unfinished:
        print(f"\nreplicates not finished, left out: {unfinished} ({len(fitted)} of {args.seeds} fitted)")
    if len(per) < 2:
        print("error: fewer than 2 finished replicates", file=sys.stderr)
        return 1
    res = summarize(per)
    print("\nreplicate  train.seed  eval_seed  a (Approach 2) [95 %]          a (Approach 3) [95 %]")
    for r, p in zip(fitted, per):
        f2, f3 = p["approach2"], p["approach3"]
        print(f"r{r:<9} {3 * r:<11} {r:<10} {_num(f2['a']):.4f} [{_num(f2['lo']):.4f}, {_num(f2['hi']):.4f}]"
              f"    {_num(f3['a']):.4f} [{_num(f3['lo']):.4f}, {_num(f3['hi']):.4f}]")
    for key, v in res.items():
        print(f"{key}: mean a {v['mean_a']:.4f}, sd(a) {v['sd_a']:.4f}, mean half-width {v['mean_halfwidth']:.4f}, "
              f"ratio sd / (hw / 1.96) = {v['ratio']:.2f} (calibrated: in [{v['ratio_95'][0]:.2f}, "
              f"{v['ratio_95'][1]:.2f}] with 95 % probability); {v['cover_mean']} of {v['n']} intervals "
              f"contain the mean; bootstrap replicates failed: {v['boot_failed']} of {v['boot_total']}")
    if per and per[0].get("sentence"):
        print(f"noise model (replicate 0): {per[0]['sentence']}")
    print("\nMarkdown (benchmarks/README.md):\n")
    print("| replicate | train.seed (+ follow-up seeds) | data.eval_seed | a, Approach 2 [95 %] | a, Approach 3 [95 %] |")
    print("|---|---|---|---|---|")
    for r, p in zip(fitted, per):
        f2, f3 = p["approach2"], p["approach3"]
        print(f"| r{r} | {3 * r} ({3 * r + 1}, {3 * r + 2}) | {r} | {_num(f2['a']):.3f} [{_num(f2['lo']):.3f}, "
              f"{_num(f2['hi']):.3f}] | {_num(f3['a']):.3f} [{_num(f3['lo']):.3f}, {_num(f3['hi']):.3f}] |")
    print("\n| approach | mean a | sd(a) over sweeps | mean half-width | ratio sd / (hw / 1.96) "
          "| calibrated range (95 %) | intervals containing the mean | bootstrap replicates failed |")
    print("|---|---|---|---|---|---|---|---|")
    for key, v in res.items():
        print(f"| {key} | {v['mean_a']:.3f} | {v['sd_a']:.4f} | {v['mean_halfwidth']:.4f} | {v['ratio']:.2f} "
              f"| [{v['ratio_95'][0]:.2f}, {v['ratio_95'][1]:.2f}] | {v['cover_mean']} of {v['n']} "
              f"| {v['boot_failed']} of {v['boot_total']} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps({"replicates": dict(zip(fitted, per)), "unfinished": unfinished,
                                                     "summary": res, "wall_s": walls},
                                                     indent=2, default=str))
    print(json.dumps({k: {m: v[m] for m in ("sd_a", "mean_halfwidth", "ratio", "n")} for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
