"""Chaos test of the sweep runner: SIGKILL or SIGTERM at random moments, rerun, check everything.

    python benchmarks/chaos.py --trials 20 [--seed 0] [--spec cooldown|lr] [--steps 300]

A small sweep (`--points` learning rates of one tiny model, `--steps` steps each, the
spec written to a temporary folder) is first run twice without interruption: the first
run warms the corpus and compilation caches, the second is the reference, and its wall
time T (process start to exit) sets the kill window. `--spec cooldown` (the default) is
two model shapes, each a constant-lr trunk with a WSD cooldown branch at two lengths (six
points, branches after their trunks); `--spec lr` is `--points` learning rates of one
shape. Each trial starts the same sweep in a fresh folder (its own process group), sends
at a moment drawn uniformly from [0, T) (seeded: `--seed`) either SIGKILL to the sweep
process or SIGTERM to the whole process group, as `timeout` and SLURM send it
(alternating; `--signals`), reruns the sweep to the end, and checks:

    duplicates        a point trained again after it had finished (its result.json
                      rewritten), a step logged twice in a learning curve, or a point
                      twice in results.csv
    lost results      a point without a `done` result after the rerun
    mismatched curves a point whose train or eval losses differ, at any step, from the
                      reference run's (exact equality by default: on one CPU or GPU the
                      runner's batches and resumption are deterministic; --tolerance)
    results           a result.json whose numbers (losses, stderr, steps, D, N, C) differ
                      from the reference run's (same tolerance)
    restarted         a point whose result says it resumed from another step than its
                      newest checkpoint at the kill (a point restarted from step 0 instead
                      of resumed; a fresh branch starts at its branch step)
    bad lines         unparsable metrics.jsonl lines (reported, never skipped silently)
    orphans           worker processes of the trial's sweep still alive 30 s after the
                      killed or stopped sweep process ended
    SIGTERM exit      a SIGTERM-ed sweep that did not exit 143 (or 0, if it had ended).
                      run_sweep.py claims SIGTERM at its first line; a signal that lands
                      earlier, while the interpreter itself starts (tens of ms), kills
                      it by the OS default (exit -15) before anything is written: such a
                      trial is counted as "before Python" (not a failure) when the sweep
                      folder does not exist, and as a failure otherwise
    temp files        files or folders named *.tmp or *tmp* (ours, orbax's) left anywhere
                      in the sweep folder
    status            `run_sweep.py status` exits 0 and reports every point `done`

The kill lands wherever the sweep is at that moment: importing, planning, compiling,
training, inside a checkpoint or a results-table write, or after the sweep ended (the
table says which trials' kills arrived too late). Prints one row per trial and a total;
exits 1 if any check failed. Takes about (trials + 2) x T; T is ~30-60 s on 2 CPU cores.
results.csv is read with a CSV parser.
"""

from __future__ import annotations

import argparse
import csv
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


COOLDOWN_SPEC = """
name = "chaos"
[model]
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
model = {{ n = [2e4, 6e4], aspect_ratio = 32, head_dim = 16 }}
data = {{ tokens = [{short}, {tokens}] }}
cooldown = {{ fraction = 0.2, shape = "1-sqrt" }}
"""


def write_spec(folder: Path, points: int, steps: int, d_model: int, seq_len: int, batch: int,
               checkpoint_every: int, kind: str = "cooldown") -> Path:
    lrs = ", ".join(f"{1e-3 * (1 + i):.0e}" for i in range(points))
    tokens = steps * batch * seq_len
    template = COOLDOWN_SPEC if kind == "cooldown" else SPEC
    text = template.format(d_model=d_model, seq_len=seq_len, batch=batch, tokens=tokens,
                           short=tokens // 2, checkpoint_every=checkpoint_every, lrs=lrs)
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


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def run_and_kill(spec: Path, out: Path, at_s: float, how: str) -> tuple[bool, int | None]:
    """Start the sweep in its own process group and, `at_s` seconds later, SIGKILL it
    (`how` = "kill") or SIGTERM the group ("term"). (signalled, exit status); signalled is
    False if the sweep ended first."""
    proc = subprocess.Popen(sweep_cmd(spec, out), cwd=ROOT, env=env(), start_new_session=True,
                            preexec_fn=_default_signals,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=at_s)
        return False, proc.returncode
    except subprocess.TimeoutExpired:
        if how == "kill":
            proc.send_signal(signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        return True, proc.wait()


def orphans(sweep_parent: Path, wait_s: float = 30.0) -> list[int]:
    """Pids of worker processes of this trial's sweep still alive after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = [c.decode(errors="replace") for c in cmd]
            if "scaling.executors.local" in text and any(str(sweep_parent) in c for c in text):
                alive.append(int(d.name))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def checkpoint_steps(point: Path) -> list[int]:
    d = point / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


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


def curve(point: Path, bad: list | None = None) -> tuple[list[tuple], list[int]]:
    """([(kind, step, loss)], steps logged more than once) from metrics.jsonl; the numbers
    of unparsable lines are appended to `bad`."""
    rows = []
    path = point / "metrics.jsonl"
    if path.exists():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if bad is not None:
                    bad.append(number)
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


RESULT_KEYS = ("status", "final_eval_loss", "final_train_loss", "best_eval_loss",
               "eval_loss_stderr", "steps", "D", "N", "C", "trunk", "branched_at_step")


def results_differ(got: dict, want: dict, tol: float) -> list[str]:
    """The result.json keys whose values differ from the reference's."""
    bad = []
    for k in RESULT_KEYS:
        a, b = got.get(k), want.get(k)
        if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
            if abs(a - b) > tol:
                bad.append(k)
        elif a != b and not (isinstance(a, float) and isinstance(b, float)
                             and math.isnan(a) and math.isnan(b)):
            bad.append(k)
    return bad


def check(sweep: Path, reference: dict[str, list[tuple]], finished_before: dict[str, float],
          tol: float, ref_results: dict[str, dict], at_kill: dict[str, int]) -> dict:
    points = point_dirs(sweep)
    duplicates, lost, mismatched, worst = set(), set(), set(), 0.0
    differ, restarted, bad_lines = {}, {}, {}
    for pid, d in points.items():
        result = read_json(d / "result.json")
        if not isinstance(result, dict) or result.get("status") != "done":
            lost.add(pid)
        else:
            keys = results_differ(result, ref_results.get(pid, {}), tol)
            if keys:
                differ[pid] = keys
        if pid not in finished_before and isinstance(result, dict):  # trained after the kill
            meta = read_json(d / "point.json") or {}
            start = at_kill.get(pid) or (meta.get("branched_at_step") or 0)
            if result.get("resumed_from_step") != start:
                restarted[pid] = (result.get("resumed_from_step"), start)
        if pid in finished_before and (d / "result.json").stat().st_mtime != finished_before[pid]:
            duplicates.add(pid)  # finished before the kill, yet trained (written) again
        bad = []
        got, twice = curve(d, bad)
        if bad:
            bad_lines[pid] = bad
        if twice:
            duplicates.add(pid)
        ok, diff = curves_match(got, reference.get(pid, []), tol)
        worst = max(worst, diff)
        if not ok:
            mismatched.add(pid)
    lost |= set(reference) - set(points)
    table = sweep / "results.csv"
    if table.exists():
        with open(table, newline="") as f:
            ids = [row["point_id"] for row in csv.DictReader(f)]
        duplicates |= {i for i in ids if ids.count(i) > 1}
    status = subprocess.run([sys.executable, "run_sweep.py", "status", str(sweep)], cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=120)
    lines = status.stdout.splitlines()  # line 2 counts the states: "  done 3" when all are
    status_ok = status.returncode == 0 and len(lines) > 1 and lines[1].strip() == f"done {len(reference)}"
    return {"points": len(points), "duplicates": len(duplicates), "lost": len(lost),
            "mismatched": len(mismatched), "max_diff": worst, "temps": temp_leftovers(sweep),
            "results": differ, "restarted": restarted, "bad_lines": bad_lines,
            "status_ok": status_ok, "status_text": status.stdout + status.stderr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kills (one per trial)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--spec", choices=("cooldown", "lr"), default="cooldown",
                    help="cooldown: 2 shapes x (trunk + branches at 2 lengths); lr: --points lrs")
    ap.add_argument("--signals", default="kill,term",
                    help="comma-separated, used in turn: kill (SIGKILL to the sweep process), "
                         "term (SIGTERM to its process group)")
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
    signals = [s.strip() for s in args.signals.split(",") if s.strip()]
    if not signals or set(signals) - {"kill", "term"}:
        ap.error(f"--signals {args.signals!r}: a comma-separated list of kill, term")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec = write_spec(work, args.points, args.steps, args.d_model, args.seq_len, args.batch,
                          args.checkpoint_every, args.spec)
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
        ref_results = {pid: read_json(d / "result.json") or {}
                       for pid, d in point_dirs(ref_sweep).items()}
        warm_curves = {pid: curve(d)[0] for pid, d in point_dirs(work / "warm" / "chaos").items()}
        same = all(curves_match(warm_curves.get(p, []), c, args.tolerance)[0]
                   for p, c in reference.items())
        what = ("2 shapes x (trunk + cooldown branches at 2 lengths)" if args.spec == "cooldown"
                else f"{args.points} lrs x 1 shape (d_model {args.d_model})")
        print(f"sweep: {len(reference)} points, {what}, up to {args.steps} steps (seq "
              f"{args.seq_len}, batch {args.batch}, checkpoint every {args.checkpoint_every}); "
              f"signals in turn: {', '.join(signals)}")
        print(f"clean run: {wall:.1f} s wall (first, cold-cache run {warm_s:.1f} s); "
              f"two clean runs' curves identical: {same}")
        print(f"kill moments: uniform in [0, {wall:.1f}) s after start, seed {args.seed}\n")

        rng = random.Random(args.seed)
        header = (f"{'trial':>5s} {'signal':>6s} {'at s':>7s} {'hit':>4s} {'rc':>4s} "
                  f"{'done@kill':>9s} {'points':>6s} {'dupl':>4s} {'lost':>4s} {'mism':>4s} "
                  f"{'max |dloss|':>11s} {'res':>3s} {'rst':>3s} {'badln':>5s} {'orph':>4s} "
                  f"{'temps':>5s} {'status':>6s} {'rerun s':>7s}")
        print(header)
        print("-" * len(header))
        totals = {"killed": 0, "points": 0, "duplicates": 0, "lost": 0, "mismatched": 0,
                  "temps": 0, "status_bad": 0, "rerun_failed": 0, "results": 0, "restarted": 0,
                  "bad_lines": 0, "orphans": 0, "term_exit": 0, "prestart": 0}
        for trial in range(args.trials):
            at = rng.uniform(0.0, wall)
            out = work / f"trial{trial:03d}"
            how = signals[trial % len(signals)]
            killed, rc = run_and_kill(spec, out, at, how)
            orphan_pids = orphans(out)
            sweep = out / "chaos"
            finished = {pid: (d / "result.json").stat().st_mtime
                        for pid, d in point_dirs(sweep).items()
                        if isinstance(read_json(d / "result.json"), dict)}
            at_kill = {pid: max(checkpoint_steps(d), default=0)
                       for pid, d in point_dirs(sweep).items()}
            prestart = how == "term" and rc == -signal.SIGTERM and not (out / "chaos").exists()
            term_bad = (how == "term" and rc not in ((143, 0) if killed else (0,))
                        and not prestart)
            rerun_s, rerun = run_to_end(spec, out, timeout)
            c = check(sweep, reference, finished, args.tolerance, ref_results, at_kill)
            bad_rerun = rerun.returncode != 0
            totals["killed"] += killed
            totals["points"] += c["points"]
            for k in ("duplicates", "lost", "mismatched"):
                totals[k] += c[k]
            totals["temps"] += len(c["temps"])
            totals["status_bad"] += not c["status_ok"]
            totals["rerun_failed"] += bad_rerun
            totals["results"] += len(c["results"])
            totals["restarted"] += len(c["restarted"])
            totals["bad_lines"] += sum(map(len, c["bad_lines"].values()))
            totals["orphans"] += len(orphan_pids)
            totals["term_exit"] += term_bad
            totals["prestart"] += prestart
            print(f"{trial:5d} {how:>6s} {at:7.2f} {'yes' if killed else 'late':>4s} {rc:4d} "
                  f"{len(finished):9d} {c['points']:6d} {c['duplicates']:4d} {c['lost']:4d} "
                  f"{c['mismatched']:4d} {c['max_diff']:11.3g} {len(c['results']):3d} "
                  f"{len(c['restarted']):3d} {sum(map(len, c['bad_lines'].values())):5d} "
                  f"{len(orphan_pids):4d} {len(c['temps']):5d} "
                  f"{'ok' if c['status_ok'] else 'BAD':>6s} {rerun_s:7.1f}", flush=True)
            for pid, keys in c["results"].items():
                print(f"      {pid}: result.json differs from the reference in {keys}")
            for pid, (got, want) in c["restarted"].items():
                print(f"      {pid}: resumed from step {got}, its newest checkpoint was {want}")
            for pid, lines in c["bad_lines"].items():
                print(f"      {pid}: unparsable metrics.jsonl line(s) {lines[:10]}")
            if orphan_pids:
                print(f"      orphan workers alive 30 s after the sweep ended: {orphan_pids}")
            if prestart:
                print("      SIGTERM before Python ran run_sweep.py: exit -15 (the OS "
                      "default), nothing written")
            if term_bad:
                print(f"      SIGTERM-ed sweep exited {rc}, not 143")
            if c["temps"]:
                print(f"      temp files left: {c['temps'][:5]}")
            if bad_rerun:
                print(f"      rerun exited {rerun.returncode}: {rerun.stderr[-800:]}")
            if not c["status_ok"]:
                print("      status: " + c["status_text"][-800:].replace("\n", "\n      "))
            if not args.workdir:
                shutil.rmtree(out, ignore_errors=True)
        print("-" * len(header))
        print(f"total: {args.trials} trials, {totals['killed']} signalled mid-sweep, "
              f"{totals['points']} points; duplicates {totals['duplicates']}, lost results "
              f"{totals['lost']}, mismatched curves {totals['mismatched']}, differing results "
              f"{totals['results']}, restarted instead of resumed {totals['restarted']}, "
              f"unparsable metrics lines {totals['bad_lines']}, orphan workers "
              f"{totals['orphans']}, SIGTERM exits not 143 {totals['term_exit']} (before Python "
              f"started, nothing written: {totals['prestart']}), temp files "
              f"{totals['temps']}, bad status {totals['status_bad']}, failed reruns "
              f"{totals['rerun_failed']}")
        clean = not any(totals[k] for k in ("duplicates", "lost", "mismatched", "temps",
                                             "status_bad", "rerun_failed", "results",
                                             "restarted", "bad_lines", "orphans",
                                             "term_exit")) and same
        print("RESULT:", "all clean" if clean else "FAILURES (see above)")
        return 0 if clean else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
