"""Chaos test of the sweep runner: SIGKILL at random moments, rerun, check everything.

    python benchmarks/chaos.py --trials 20 [--seed 0] [--points 3] [--steps 300]

A small sweep (`--points` learning rates of one tiny model, `--steps` steps each, the
spec written to a temporary folder) is first run twice without interruption: the first
run warms the corpus and compilation caches, the second is the reference, and its wall
time T (process start to exit) sets the kill window. Each trial then starts the same
sweep in a fresh folder, sends SIGKILL at a moment drawn uniformly from [0, T) (seeded:
`--seed`), reruns the sweep to the end, and checks:

    duplicates        a point trained again after it had finished (its result.json
                      rewritten), a step logged twice in a learning curve, or a point
                      twice in results.csv
    lost results      a point without a `done` result after the rerun
    mismatched curves a point whose train or eval losses differ, at any step, from the
                      reference run's (exact equality by default: on one CPU or GPU the
                      runner's batches and resumption are deterministic; --tolerance)
    temp files        files or folders named *.tmp or *tmp* (ours, orbax's) left anywhere
                      in the sweep folder
    status            `run_sweep.py status` exits 0 and reports every point `done`

The kill lands wherever the sweep is at that moment: importing, planning, compiling,
training, inside a checkpoint or a results-table write, or after the sweep ended (the
table says which trials' kills arrived too late). Prints one row per trial and a total;
exits 1 if any check failed. Takes about (trials + 2) x T; T is ~30-60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
name = "chaos"
[model]
n_layer = 2
d_model = {d_model}
n_head = 2
seq_len = {seq_len}
[data]
max_corpus_bytes = 1_000_000
[optim]
lr = 3e-3
[train]
batch_size = {batch}
eval_tokens = 2048
log_every = 10
checkpoint_every = {checkpoint_every}
progress = false
[sweep]
warmup_fraction = 0.05
evals_per_run = 4
data = {{ tokens = [{tokens}] }}
[sweep.axes]
"optim.lr" = [{lrs}]
"""


def write_spec(folder: Path, points: int, steps: int, d_model: int, seq_len: int, batch: int,
               checkpoint_every: int) -> Path:
    lrs = ", ".join(f"{1e-3 * (1 + i):.0e}" for i in range(points))
    text = SPEC.format(d_model=d_model, seq_len=seq_len, batch=batch, tokens=steps * batch * seq_len,
                       checkpoint_every=checkpoint_every, lrs=lrs)
    path = folder / "chaos.toml"
    path.write_text(text)
    return path


def sweep_cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "run_sweep.py", "run", str(spec), "--out", str(out), "--no-progress"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_to_end(spec: Path, out: Path, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run(sweep_cmd(spec, out), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    return time.monotonic() - t0, proc


def run_and_kill(spec: Path, out: Path, at_s: float) -> bool:
    """Start the sweep and SIGKILL it `at_s` seconds later; False if it ended first."""
    proc = subprocess.Popen(sweep_cmd(spec, out), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at_s)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


# --------------------------------------------------------------------------------------
# Reading a sweep folder
# --------------------------------------------------------------------------------------


def point_dirs(sweep: Path) -> dict[str, Path]:
    folder = sweep / "points"
    return {d.name: d for d in sorted(folder.iterdir()) if d.is_dir()} if folder.exists() else {}


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def curve(point: Path) -> tuple[list[tuple], list[int]]:
    """([(kind, step, loss)], steps logged more than once) from metrics.jsonl."""
    rows = []
    path = point / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    out, seen, twice = [], set(), []
    for r in rows:
        for kind in ("loss", "eval_loss"):
            if kind in r:
                key = (kind, r["step"])
                if key in seen:
                    twice.append(r["step"])
                seen.add(key)
                out.append((kind, r["step"], r[kind]))
    return sorted(out), twice


def temp_leftovers(sweep: Path) -> list[str]:
    return [str(p.relative_to(sweep)) for p in sweep.rglob("*")
            if p.name.endswith(".tmp") or "tmp" in p.name.lower()]


def curves_match(a: list[tuple], b: list[tuple], tol: float) -> tuple[bool, float]:
    if [(k, s) for k, s, _ in a] != [(k, s) for k, s, _ in b]:
        return False, math.inf
    diff = max((abs(x - y) for (_, _, x), (_, _, y) in zip(a, b)), default=0.0)
    return diff <= tol, diff


# --------------------------------------------------------------------------------------
# One trial
# --------------------------------------------------------------------------------------


def check(sweep: Path, reference: dict[str, list[tuple]], finished_before: dict[str, float],
          tol: float) -> dict:
    points = point_dirs(sweep)
    duplicates, lost, mismatched, worst = set(), set(), set(), 0.0
    for pid, d in points.items():
        result = read_json(d / "result.json")
        if not isinstance(result, dict) or result.get("status") != "done":
            lost.add(pid)
        if pid in finished_before and (d / "result.json").stat().st_mtime != finished_before[pid]:
            duplicates.add(pid)  # finished before the kill, yet trained (written) again
        got, twice = curve(d)
        if twice:
            duplicates.add(pid)
        ok, diff = curves_match(got, reference.get(pid, []), tol)
        worst = max(worst, diff)
        if not ok:
            mismatched.add(pid)
    lost |= set(reference) - set(points)
    table = sweep / "results.csv"
    if table.exists():
        ids = [line.split(",")[1] for line in table.read_text().splitlines()[1:] if line]
        duplicates |= {i for i in ids if ids.count(i) > 1}
    status = subprocess.run([sys.executable, "run_sweep.py", "status", str(sweep)], cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=120)
    lines = status.stdout.splitlines()  # line 2 counts the states: "  done 3" when all are
    status_ok = status.returncode == 0 and len(lines) > 1 and lines[1].strip() == f"done {len(reference)}"
    return {"points": len(points), "duplicates": len(duplicates), "lost": len(lost),
            "mismatched": len(mismatched), "max_diff": worst, "temps": temp_leftovers(sweep),
            "status_ok": status_ok, "status_text": status.stdout + status.stderr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kills (one per trial)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--points", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="steps per point")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="largest |loss difference| accepted between a curve and the reference")
    ap.add_argument("--workdir", help="keep the sweep folders here (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.points < 1 or args.steps < 20:
        ap.error("--trials and --points must be >= 1, --steps >= 20")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec = write_spec(work, args.points, args.steps, args.d_model, args.seq_len, args.batch,
                          args.checkpoint_every)
        timeout = 3600.0
        warm_s, warm = run_to_end(spec, work / "warm", timeout)
        if warm.returncode != 0:
            print(warm.stderr[-3000:], file=sys.stderr)
            return 1
        wall, ref_run = run_to_end(spec, work / "clean", timeout)
        if ref_run.returncode != 0:
            print(ref_run.stderr[-3000:], file=sys.stderr)
            return 1
        ref_sweep = work / "clean" / "chaos"
        reference = {pid: curve(d)[0] for pid, d in point_dirs(ref_sweep).items()}
        warm_curves = {pid: curve(d)[0] for pid, d in point_dirs(work / "warm" / "chaos").items()}
        same = all(curves_match(warm_curves.get(p, []), c, args.tolerance)[0]
                   for p, c in reference.items())
        print(f"sweep: {len(reference)} points x {args.steps} steps (d_model {args.d_model}, "
              f"seq {args.seq_len}, batch {args.batch}, checkpoint every {args.checkpoint_every})")
        print(f"clean run: {wall:.1f} s wall (first, cold-cache run {warm_s:.1f} s); "
              f"two clean runs' curves identical: {same}")
        print(f"kill moments: uniform in [0, {wall:.1f}) s after start, seed {args.seed}\n")

        rng = random.Random(args.seed)
        header = (f"{'trial':>5s} {'kill at s':>9s} {'killed':>6s} {'done@kill':>9s} {'points':>6s} "
                  f"{'dupl':>4s} {'lost':>4s} {'mism':>4s} {'max |dloss|':>11s} {'temps':>5s} "
                  f"{'status':>6s} {'rerun s':>7s}")
        print(header)
        print("-" * len(header))
        totals = {"killed": 0, "points": 0, "duplicates": 0, "lost": 0, "mismatched": 0,
                  "temps": 0, "status_bad": 0, "rerun_failed": 0}
        for trial in range(args.trials):
            at = rng.uniform(0.0, wall)
            out = work / f"trial{trial:03d}"
            killed = run_and_kill(spec, out, at)
            sweep = out / "chaos"
            finished = {pid: (d / "result.json").stat().st_mtime
                        for pid, d in point_dirs(sweep).items()
                        if isinstance(read_json(d / "result.json"), dict)}
            rerun_s, rerun = run_to_end(spec, out, timeout)
            c = check(sweep, reference, finished, args.tolerance)
            bad_rerun = rerun.returncode != 0
            totals["killed"] += killed
            totals["points"] += c["points"]
            for k in ("duplicates", "lost", "mismatched"):
                totals[k] += c[k]
            totals["temps"] += len(c["temps"])
            totals["status_bad"] += not c["status_ok"]
            totals["rerun_failed"] += bad_rerun
            print(f"{trial:5d} {at:9.2f} {'yes' if killed else 'late':>6s} {len(finished):9d} "
                  f"{c['points']:6d} {c['duplicates']:4d} {c['lost']:4d} {c['mismatched']:4d} "
                  f"{c['max_diff']:11.3g} {len(c['temps']):5d} {'ok' if c['status_ok'] else 'BAD':>6s} "
                  f"{rerun_s:7.1f}", flush=True)
            if c["temps"]:
                print(f"      temp files left: {c['temps'][:5]}")
            if bad_rerun:
                print(f"      rerun exited {rerun.returncode}: {rerun.stderr[-800:]}")
            if not c["status_ok"]:
                print("      status: " + c["status_text"][-800:].replace("\n", "\n      "))
            if not args.workdir:
                shutil.rmtree(out, ignore_errors=True)
        print("-" * len(header))
        print(f"total: {args.trials} trials, {totals['killed']} killed mid-sweep, "
              f"{totals['points']} points; duplicates {totals['duplicates']}, lost results "
              f"{totals['lost']}, mismatched curves {totals['mismatched']}, temp files "
              f"{totals['temps']}, bad status {totals['status_bad']}, failed reruns "
              f"{totals['rerun_failed']}")
        clean = not any(totals[k] for k in ("duplicates", "lost", "mismatched", "temps",
                                             "status_bad", "rerun_failed")) and same
        print("RESULT:", "all clean" if clean else "FAILURES (see above)")
        return 0 if clean else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
