"""Command line: train one run, sample from it, plan / run / inspect sweeps, analyze.

    python run_sweep.py train experiments/tiny.toml [section.key=value ...] [--run-dir DIR]
    python run_sweep.py sample runs/tiny --prompt "def " --temperature 0.8 --top-k 40
    python run_sweep.py plan experiments/demo.toml [--json] [--device h100-80gb | --device-memory 80GB] [--devices N]
    python run_sweep.py run experiments/demo.toml [--executor local|slurm] [--out sweeps/] [--device ... | --device-memory ...]
    python run_sweep.py status sweeps/demo [--watch [--interval 5]]
    python run_sweep.py analyze sweeps/demo            # or any results CSV
    python run_sweep.py ngram experiments/tiny.toml --order 5 [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from scaling.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) one run")
    t.add_argument("config", help="a run config (TOML)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--run-dir", help="run folder (default: runs/<config name>)")

    s = sub.add_parser("sample", help="generate text from a run's newest checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--prompt", default="")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)

    pl = sub.add_parser("plan", help="print every point of a sweep without training")
    pl.add_argument("spec")
    pl.add_argument("overrides", nargs="*", help="section.key=value for every point")
    pl.add_argument("--variant", help="a [variants.<name>] table of the spec, e.g. large")
    pl.add_argument("--json", action="store_true",
                    help="print the points as a JSON list (id, label, group, N, N_total, D, "
                         "steps, budget, C_6ND, C_exact, ...; memory with --device) and "
                         "nothing else on stdout")
    _memory_options(pl)
    pl.add_argument("--devices", type=int, default=1,
                    help="devices each run uses, for the memory per device (default 1)")

    r = sub.add_parser("run", help="run (or resume) a sweep")
    r.add_argument("spec")
    r.add_argument("overrides", nargs="*", help="section.key=value for every point")
    r.add_argument("--variant", help="a [variants.<name>] table of the spec, e.g. large")
    r.add_argument("--out", default="sweeps", help="parent folder of sweep folders")
    r.add_argument("--executor", choices=["local", "slurm"], help="override the spec's executor")
    r.add_argument("--analyze", action="store_true", help="write the analysis report at the end")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--workers", type=int,
                   help="local: points run at once (default: small points side by side, one "
                        "core each; 1: one at a time in this process; GPUs: one per GPU)")
    r.add_argument("--no-wait", action="store_true",
                   help="slurm: submit and return; run again later to collect and resubmit")
    _memory_options(r)

    st = sub.add_parser("status", help="table of a sweep's points and their states")
    st.add_argument("sweep_dir")
    st.add_argument("--watch", action="store_true",
                    help="refresh every few seconds (counts, running points' step and loss) "
                         "until no point is running, queued or pending; Ctrl-C stops")
    st.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")

    a = sub.add_parser("analyze", help="fit the laws and write a report")
    a.add_argument("source", help="a sweep folder or a results CSV")
    a.add_argument("--out", help="report folder")
    a.add_argument("--accounting", choices=("total", "kaplan"),
                   help="compute accounting to fit under (default: the table's own)")
    a.add_argument("--ngram", action="append",
                   help="an n-gram result folder or result.json to draw as a reference line "
                        "(default: the sweep folder's ngram/*/); repeatable")

    ng = sub.add_parser("ngram", help="Kneser-Ney n-gram baseline on a config's tokens and eval set")
    ng.add_argument("config", help="a run config or sweep spec (TOML): its [data], seq_len, eval_tokens")
    ng.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ng.add_argument("--order", type=int, required=True, help="n-gram order K (>= 1)")
    ng.add_argument("--run-dir", help="result folder (default: sweeps/<name>/ngram/order<K> for a "
                                      "sweep spec, runs/<name>-ngram<K> for a run config)")
    return p


def _memory_options(p: argparse.ArgumentParser) -> None:
    from scaling.accounting.memory import DEVICE_MEMORY  # no jax

    g = p.add_mutually_exclusive_group()
    g.add_argument("--device", help="check every point's memory per device against this "
                                    f"device: {', '.join(DEVICE_MEMORY)}")
    g.add_argument("--device-memory", metavar="SIZE",
                   help="... against this many usable bytes per device (80GB, 80GiB, 7.5e10)")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow the options (`train cfg.toml --run-dir x model.d_model=64`).
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from scaling.runtime import setup_logging

    setup_logging()
    from scaling.train.stopping import Interrupted, release_early, stop_requests

    # train and run: SIGTERM / Ctrl-C at any moment (from run_sweep.py's first line: set-up,
    # compile, training, between points) stop cleanly with one line; other commands keep
    # the default handlers
    if args.command in ("train", "run"):
        claim = stop_requests()
    else:
        release_early()
        claim = contextlib.nullcontext()
    try:
        with claim:
            return COMMANDS[args.command](args)
    except ConfigError as e:  # bad input: one clear line, no traceback, nothing trained
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: the path and the space it needs; results are kept
        from scaling.runs.runfiles import DiskFull

        if not isinstance(e, DiskFull):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # SIGTERM / Ctrl-C: the loop saved a checkpoint first
        if isinstance(e, Interrupted):
            print(f"stopped: {e}", file=sys.stderr)
            return e.exit_code
        print("interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from scaling.config import load_config

    cfg = load_config(args.config, args.overrides)
    from scaling.train.loop import train
    from scaling.train.prepare import TrunkNotReady
    from scaling.runtime import enable_compilation_cache

    enable_compilation_cache()
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    try:
        result = train(cfg, run_dir)
    except TrunkNotReady as e:  # a branch of a trunk that is missing or not there yet
        raise ConfigError(str(e)) from None
    _print_result(run_dir, result)
    return 0 if result["status"] == "done" else 1


def _print_result(run_dir: Path, r: dict) -> None:
    print(f"\n{r['status']}: {run_dir}")
    keys = ["N", "N_total", "D", "C", "C_xla", "steps", "final_train_loss", "final_eval_loss",
            "tokens_per_s", "mfu", "compile_time_s", "wall_time_s"]
    for k in keys:
        v = r.get(k)
        print(f"  {k:18s} {v:.4g}" if isinstance(v, float) else f"  {k:18s} {v}")


def cmd_sample(args) -> int:
    from scaling.evaluation.sampling import sample_from_run

    text = sample_from_run(args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return 0


def cmd_plan(args) -> int:
    from scaling.sweep import format_plan, load_spec, plan_records
    from scaling.sweep.fit import memory_target

    target = memory_target(args.device, args.device_memory, args.devices)  # bad options first
    spec = load_spec(args.spec, args.overrides, variant=args.variant)
    if args.json:  # for scripts: stdout is the JSON list alone (warnings go to stderr)
        print(json.dumps(plan_records(spec, memory=target), indent=1, allow_nan=False))
    else:
        print(format_plan(spec, memory=target))
    return 0


def cmd_run(args) -> int:
    from scaling.executors.sweep import run_sweep

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers = {args.workers}: expected an integer >= 1")
    memory = {"device": args.device, "device_memory": args.device_memory}
    if args.device or args.device_memory:  # a bad value stops here, before the spec is read
        from scaling.sweep.fit import memory_target

        memory_target(args.device, args.device_memory)
    summary = run_sweep(args.spec, args.overrides, out=args.out, executor=args.executor,
                        variant=args.variant, progress=not args.no_progress,
                        workers=args.workers, wait=False if args.no_wait else None,
                        memory=memory)
    print(json.dumps(summary["counts"]))
    failed = summary["counts"].get("failed", 0)
    if args.analyze:
        code = _analyze(summary["sweep_dir"])
        if code:
            return code
    return 0 if failed == 0 else 1


def cmd_status(args) -> int:
    from scaling.runs.results import check_sweep_dir, format_status

    check_sweep_dir(args.sweep_dir)  # before SLURM is asked anything
    if args.watch:
        return _watch(args.sweep_dir, args.interval)
    _refresh_slurm(args.sweep_dir)
    print(format_status(args.sweep_dir))
    return 0


def _refresh_slurm(sweep_dir: str) -> None:
    if (Path(sweep_dir) / "slurm").exists():  # ask SLURM for the jobs' states first
        from scaling.executors.slurm import refresh

        refresh(sweep_dir)


def _watch(sweep_dir: str, interval: float) -> int:
    """Reprint the sweep's summary every `interval` s until nothing is running, queued or
    pending (then the full status table once); Ctrl-C ends it quietly with status 0."""
    import math
    import time

    from scaling.runs.results import format_status, watch_summary

    if not math.isfinite(interval) or interval <= 0:
        raise ConfigError(f"--interval = {interval}: expected a number of seconds > 0")
    clear = "\033[2J\033[H" if sys.stdout.isatty() else ""
    try:
        while True:
            _refresh_slurm(sweep_dir)
            text, active = watch_summary(sweep_dir)
            print(clear + text, flush=True)
            if not active:
                print("\n" + format_status(sweep_dir), flush=True)
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        print("", flush=True)
        return 0


def cmd_analyze(args) -> int:
    return _analyze(args.source, args.out, accounting=args.accounting, ngram=args.ngram)


def _analyze(source, out=None, *, accounting: str | None = None, ngram=None) -> int:
    """Write the report with `python -m analysis analyze` in a fresh process, and return its
    exit status (bad or unusable input: one `error:` line, 2). A fresh process because the
    analysis draws its figures in forked children, and a process that has run jax (its
    thread pools) must not fork; analysis/ needs nothing of scaling/ anyway."""
    _refresh_tables(source)
    cmd = [sys.executable, "-m", "analysis", "analyze", str(source)]
    if out:
        cmd += ["--out", str(out)]
    if accounting:
        cmd += ["--accounting", accounting]
    for path in ngram or ():
        cmd += ["--ngram", str(path)]
    root = str(Path(__file__).resolve().parents[1])  # the analysis package, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    sys.stdout.flush()
    return subprocess.call(cmd, env=env)


def _refresh_tables(source) -> None:
    """A sweep folder's tables are rebuilt from its point folders (the truth) before the
    analysis reads them: a stale or garbled results.parquet is never fitted. ConfigError
    if no point has finished."""
    from scaling.runs.results import points_dir, write_tables

    source = Path(source)
    if not (source.is_dir() and points_dir(source).is_dir()):
        return  # a results CSV (or nothing: the analysis says so)
    results = write_tables(source)
    if not results["status"].isin(["done", "diverged"]).any():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(results["status"].value_counts().items()))
        raise ConfigError(f"{source}: no point has finished yet ({counts or 'no points'}); "
                          "nothing to analyze: run the sweep first")


def cmd_ngram(args) -> int:
    from scaling.evaluation.ngram import base_config, default_run_dir, run_ngram
    from scaling.sweep import load_spec

    if args.order < 1:
        raise ConfigError(f"--order = {args.order}: expected an integer >= 1")
    spec = load_spec(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(spec, args.order)
    r = run_ngram(base_config(spec), args.order, run_dir)
    print(f"\ndone: {run_dir}")
    for k in ("order", "N", "D", "eval_loss", "eval_loss_stderr", "eval_tokens", "eval_documents",
              "wall_time_s"):
        v = r[k]
        print(f"  {k:18s} {v:.4g}" if isinstance(v, float) else f"  {k:18s} {v}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "plan": cmd_plan, "run": cmd_run,
            "status": cmd_status, "analyze": cmd_analyze,
            "ngram": cmd_ngram}
