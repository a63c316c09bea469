"""Wall time of a whole sweep, end to end: one point at a time (old rule) vs side by side.

    python benchmarks/sweep_speed.py                          # experiments/demo.toml
    python benchmarks/sweep_speed.py SPEC --repeats 2 [key=value ...]
    python benchmarks/sweep_speed.py --steps                  # the step-rate table behind the rule

End to end: each timing runs `run_sweep.py run SPEC --no-progress` in a fresh process, in
a fresh sweep folder, on an empty persistent compile cache (SCALINGLAB_COMPILE_CACHE); the
tokenized corpus is cached once beforehand and shared, so both rules pay the same start-up.
"old" is SCALINGLAB_SIDE_BY_SIDE=0 (every point in one process, one after another);
"new" is the default rule (scaling.executors.local.side_by_side_plan). Rules alternate within
each repeat (old, new, then new, old, ...) so that a machine shared with others loads both
alike; the table gives each timing, the ratio new/old per repeat, and its range. Both
rules must finish every point; the largest difference in final eval loss between them is
printed (one core per process may change the order of float reductions).

--against REV: "old" is instead the code of git revision REV (a temporary clone of this
repository) running --against-spec (a spec path in that revision; default: SPEC's own
path), and "new" this tree with its default rule. Both then start every timing from an
empty cache folder (SCALINGLAB_CACHE: tokenized corpus, split and compiled programs all
cold), as a user's first run does. The two codes may evaluate differently, so instead of
losses the table checks that both trained the same points (count and total D). The
issue-15 measurement ("the demo's sweep, old code vs new, same machine"):

    python benchmarks/sweep_speed.py benchmarks/specs/demo_2401b59.toml \
        --against 2401b59 --against-spec experiments/demo.toml --repeats 2

--steps: the evidence for SIDE_BY_SIDE_MAX_STEP_FLOPS. For model shapes from the demo's
smallest to beyond the threshold, the training step's rate with one process on all cores
("alone") vs one process per core at once ("side by side", pinned), alternating, several
rounds: the aggregate rate ratio, median and range. Side by side wins where it is > 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def warm_corpus(spec_path: str, overrides: list[str]) -> None:
    """Tokenize and cache the spec's corpora once (both rules then find them cached)."""
    from scaling.data.dataset import load_corpus
    from scaling.sweep import load_spec

    seen = set()
    for p in load_spec(spec_path, overrides).points:
        key = (repr(p.config.data), p.config.model.seq_len)
        if key not in seen:
            seen.add(key)
            load_corpus(p.config.data, p.config.model.seq_len)


def time_sweep(spec_path: str, overrides: list[str], rule: str, work: Path,
               code: Path | None = None) -> tuple[float, Path]:
    """Seconds for one `run` of the sweep under `rule` ("old" | "new"), from scratch.

    `code`: the checkout whose run_sweep.py runs (--against: the old revision's clone for
    "old", this tree for "new"), with every cache cold; None: this tree, corpus cached."""
    out = work / f"{rule}-{time.time_ns()}"
    root = code or ROOT
    env = dict(os.environ, SCALINGLAB_COMPILE_CACHE=str(out / "xla-cache"), PYTHONPATH=str(root))
    env.pop("SCALINGLAB_SIDE_BY_SIDE", None)
    if code is not None:
        env["SCALINGLAB_CACHE"] = str(out / "cache")
    elif rule == "old":
        env["SCALINGLAB_SIDE_BY_SIDE"] = "0"
    cmd = [sys.executable, str(root / "run_sweep.py"), "run", spec_path, *overrides,
           "--out", str(out / "sweeps"), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{rule} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    sweep_dir = next((out / "sweeps").iterdir())
    return seconds, sweep_dir


def checkout(rev: str, work: Path) -> Path:
    """A clone of this repository at `rev` (the code --against times)."""
    dest = work / f"code-{rev}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", rev], check=True)
    return dest


def end_to_end(args) -> None:
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="sweep_speed-"))
    spec = Path(args.spec).resolve()  # the sweeps run with the code's checkout as cwd
    specs = {"old": str(spec), "new": str(spec)}
    codes = {"old": None, "new": None}
    if args.against:
        if args.against_spec is None and not spec.is_relative_to(ROOT):
            sys.exit(f"{args.spec} is outside this repository: give --against-spec")
        codes = {"old": checkout(args.against, work), "new": ROOT}
        old_spec = args.against_spec or str(spec.relative_to(ROOT))
        specs["old"] = str(codes["old"] / old_spec)
        print(f"old: the code of {args.against} on {old_spec}; new: this tree on {args.spec}")
    else:
        warm_corpus(args.spec, args.overrides)
    rows, losses, points = [], {}, {}
    for r in range(args.repeats):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        times = {}
        for rule in order:
            seconds, sweep_dir = time_sweep(specs[rule], args.overrides, rule, work, codes[rule])
            table = pd.read_csv(sweep_dir / "results.csv")
            if not (table["status"] == "done").all():
                sys.exit(f"{rule}: not every point is done:\n{table['status'].value_counts()}")
            losses.setdefault(rule, []).append(table.set_index("point_id")["final_eval_loss"])
            points[rule] = (len(table), int(table["D"].sum()))
            times[rule] = seconds
            print(f"repeat {r + 1} {rule}: {seconds:7.1f} s  ({len(table)} points, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
        rows.append({"repeat": r + 1, "old_s": times["old"], "new_s": times["new"],
                     "ratio": times["new"] / times["old"]})
    df = pd.DataFrame(rows)
    caches = "every cache empty" if args.against else "empty compile cache, corpus cached"
    print(f"\nspec {args.spec} {' '.join(args.overrides)}; {os.cpu_count()} cores; "
          f"fresh sweep folder and {caches} per timing")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ratios = df["ratio"]
    print(f"\nnew/old wall time: median {ratios.median():.3f}, range "
          f"[{ratios.min():.3f}, {ratios.max():.3f}] over {len(df)} repeat(s) "
          f"(< 1: new is faster)")
    if args.against:
        (n_old, d_old), (n_new, d_new) = points["old"], points["new"]
        print(f"points trained: old {n_old} ({d_old:,} tokens), new {n_new} ({d_new:,} tokens)"
              + ("" if (n_old, d_old) == (n_new, d_new) else "  -- NOT THE SAME STUDY"))
        return
    diff = (losses["new"][0] - losses["old"][0]).abs().max()
    print(f"largest |final eval loss new - old| over points: {diff:.2e}")


# --------------------------------------------------------------------------------------
# --steps: step rates alone vs side by side
# --------------------------------------------------------------------------------------

STEP_SHAPES = [  # (name, n_layer, d_model, n_head, seq_len, batch): vocab 256
    ("demo n3.31k", 1, 16, 1, 64, 16),
    ("demo n56.6k", 2, 48, 3, 64, 16),
    ("demo n156k", 2, 80, 5, 64, 16),
    ("L2 d128 T64 B16", 2, 128, 8, 64, 16),
    ("L4 d128 T64 B16", 4, 128, 8, 64, 16),
    ("L4 d128 T128 B16", 4, 128, 8, 128, 16),
    ("L4 d256 T256 B16", 4, 256, 16, 256, 16),
]

STEP_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
if os.environ.get("PIN"):
    os.sched_setaffinity(0, {int(os.environ["PIN"])})
from scaling.runtime import tune_host_runtime
tune_host_runtime()
import jax, numpy as np, jax.numpy as jnp
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig
from scaling.train.step import Trainer
L, d, H, T, B = map(int, sys.argv[2:7]); secs = float(sys.argv[7])
m = ModelConfig(n_layer=L, d_model=d, n_head=H, seq_len=T, vocab_size=256,
                pos_encoding="learned", tie_embeddings=True)
cfg = Config(name="b", model=m, optim=OptimConfig(name="adamw", lr=1e-3),
             train=TrainConfig(steps=1000, batch_size=B, progress=False)).validate()
tr = Trainer(cfg); st = tr.init_state(0); step = tr.compile_step()
batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (B, T + 1)), jnp.int32)
for _ in range(3):
    st, mt = step(st, batch); jax.block_until_ready(mt["loss"])
print("ready", flush=True); sys.stdin.readline()
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < secs:
    st, mt = step(st, batch); jax.block_until_ready(mt["loss"]); n += 1
print(n / (time.perf_counter() - t0), flush=True)
"""


def _rates(shape, pins: list[str | None], secs: float) -> list[float]:
    """Step rates of len(pins) processes timed over the same `secs` window."""
    procs = []
    for pin in pins:
        env = dict(os.environ)
        if pin is not None:
            env.update(PIN=pin, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", STEP_CHILD, str(ROOT), *map(str, shape[1:]), str(secs)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:  # compiled and warm: start the timed window together
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def step_table(args) -> None:
    from scaling.accounting.counts import flops_per_token
    from scaling.config import ModelConfig

    cores = sorted(os.sched_getaffinity(0))
    print(f"{len(cores)} cores; {args.rounds} rounds of {args.seconds:.0f} s each, alternating")
    print(f"{'shape':18s} {'FLOPs/step':>10s} {'alone st/s':>11s} {'side st/s':>10s} "
          f"{'ratio med':>9s} {'range':>15s}")
    for shape in STEP_SHAPES:
        if args.only and not any(o in shape[0] for o in args.only):
            continue
        _, L, d, H, T, B = shape
        m = ModelConfig(n_layer=L, d_model=d, n_head=H, seq_len=T, vocab_size=256,
                        pos_encoding="learned", tie_embeddings=True)
        fps = flops_per_token(m).exact * B * T
        ratios, alone, side = [], [], []
        for _ in range(args.rounds):
            a = _rates(shape, [None], args.seconds)[0]
            s = sum(_rates(shape, [str(c) for c in cores], args.seconds))
            alone.append(a)
            side.append(s)
            ratios.append(s / a)
        print(f"{shape[0]:18s} {fps:10.2e} {statistics.median(alone):11.1f} "
              f"{statistics.median(side):10.1f} {statistics.median(ratios):9.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default=str(ROOT / "experiments" / "demo.toml"))
    ap.add_argument("overrides", nargs="*", help="section.key=value for every point")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--against", metavar="REV",
                    help="time the code of this git revision as 'old' (see above)")
    ap.add_argument("--against-spec", metavar="PATH",
                    help="--against: the spec path in that revision (default: SPEC's)")
    ap.add_argument("--steps", action="store_true", help="the step-rate table instead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", action="append", help="--steps: shapes whose name contains this")
    args = ap.parse_args()
    step_table(args) if args.steps else end_to_end(args)


if __name__ == "__main__":
    main()
