"""What train.noise_scale costs: the same run with and without it, alternated.

    python benchmarks/noise_scale_cost.py [--repeats 3] [section.key=value ...]

Trains experiments/tiny.toml (plus the overrides) for --steps steps with
train.noise_scale = false and = true, in turn, --repeats times each, in fresh folders, and
prints each run's training throughput (tokens/s after compilation, from result.json) and
the median ratio on / off. On one device without micro-batches the noise scale splits the
batch in two (scaling/train/noise_scale.py), so the ratio is the price of half-size passes;
with train.micro_batches > 1 it is one squared norm per micro-batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(run_dir: Path, steps: int, noise: bool, overrides: list[str]) -> float:
    cmd = [sys.executable, str(ROOT / "run_sweep.py"), "train", str(ROOT / "experiments" / "tiny.toml"),
           "--run-dir", str(run_dir), f"train.steps={steps}", "train.eval_every=0",
           "train.checkpoint_every=0", "train.progress=false", f"train.noise_scale={str(noise).lower()}",
           *overrides]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-800:]}")
    return float(json.loads((run_dir / "result.json").read_text())["tokens_per_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.steps < 10 or args.repeats < 1:
        print("error: --steps >= 10 and --repeats >= 1", file=sys.stderr)
        return 2
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            off = one(Path(tmp) / f"off{r}", args.steps, False, args.overrides)
            on = one(Path(tmp) / f"on{r}", args.steps, True, args.overrides)
            ratios.append(on / off)
            print(f"repeat {r}: tokens/s off {off:,.0f}, on {on:,.0f}, on/off {on / off:.3f}", flush=True)
    print(f"median throughput on/off over {args.repeats} repeats: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
