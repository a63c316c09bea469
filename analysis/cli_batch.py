"""The command line's critical-batch-size part (used by analysis/__main__.py):

    python -m analysis batch SWEEP_OR_TABLE [--targets 3.2,3.0,...] [--loss eval|train]
        [--n-boot 1000] [--seed 0] [--json] [--out DIR]

B is in tokens (batch_size x seq_len). Prints, per optimizer and target loss, S_min, E_min and
B_crit with intervals (or a bound, or why not fitted) and B_crit(L) (analysis/batch.py);
``--out DIR`` also writes ``critical_batch.json``, ``critical_batch.md`` and the two figures.
Bad input (a target that is not a positive number, --n-boot < 0, a table without learning
curves or with fewer than 3 batch sizes) is one line naming the option or the problem,
exit 2, nothing written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from analysis.batch import LOSSES, analyze_batch, load_batch_tables
from analysis.result import json_default


def add_batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="critical batch size: steps and tokens to reach target losses "
                       "across batch sizes (B in tokens), S_min, E_min, B_crit, B_crit(L)")
    b.add_argument("source", help="sweep folder (or its results table) with batch_size, seq_len "
                   "and learning curves")
    b.add_argument("--targets", default=None, metavar="L1,L2,...",
                   help="target losses, comma-separated (default: chosen from the losses most "
                        "batch sizes reach, analysis/batch.py)")
    b.add_argument("--loss", default="eval", help="curve to read: eval (held-out per-token loss, "
                   "default) or train (smoothed training loss)")
    b.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--accounting", choices=("total", "kaplan"), default=None)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--out", default=None, help="also write the table, JSON and figures here")


def parse_targets(text: str | None) -> list[float] | None:
    """'3.2,3.0' -> [3.2, 3.0]; ValueError naming --targets otherwise."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"--targets: {part.strip()!r} is not a number; allowed: positive "
                             "losses separated by commas, e.g. 3.2,3.0,2.8") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--targets: {part.strip()!r}: a target loss must be finite and positive")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError("--targets: a target is given twice")
    return out


def check_args(args) -> str | None:
    """The first bad option in one line, or None."""
    try:
        parse_targets(args.targets)
    except ValueError as exc:
        return str(exc)
    if args.loss not in LOSSES:
        return f"--loss: {args.loss!r}; allowed: {', '.join(LOSSES)}"
    if args.n_boot < 0:
        return f"--n-boot: must be >= 0, got {args.n_boot}"
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        return f"--out: {args.out} exists and is not a folder"
    return None


def batch_main(args) -> int:
    bad = check_args(args)
    try:
        if bad:
            raise ValueError(bad)
        runs, curves = load_batch_tables(args.source, loss=args.loss, accounting=args.accounting)
        an = analyze_batch(runs, curves, parse_targets(args.targets), loss=args.loss,
                           n_boot=args.n_boot, seed=args.seed)
        if not an.targets:
            raise ValueError(f"{args.source}: no target loss ({an.targets_rule}); pass --targets")
    except (KeyError, ValueError, FileNotFoundError) as exc:
        msg = str(exc.args[0] if exc.args else exc)
        print(json.dumps({"error": msg}) if args.json else f"error: {msg}",
              file=sys.stdout if args.json else sys.stderr)
        return 2
    out = an.to_dict()
    out["source"] = str(args.source)
    if args.out is not None:
        out["written"] = _write(an, out, Path(args.out))
    if args.json:
        print(json.dumps(out, default=json_default))
    else:
        print(f"{args.source}: {len(runs)} runs")
        print(an.describe())
        if args.out is not None:
            print("written: " + ", ".join(out["written"]))
    return 0


def _write(an, out: dict, folder: Path) -> list[str]:
    from analysis.figures import batch as plots
    from analysis.figures.style import save
    from analysis.report.batch import table
    from analysis.report.tables import to_markdown

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "critical_batch.json").write_text(json.dumps(out, indent=2, default=json_default))
    (folder / "critical_batch.md").write_text(to_markdown(table(an)))
    paths = [folder / "critical_batch.json", folder / "critical_batch.md"]
    paths += save(plots.steps_tokens(an), folder, "batch_steps_tokens")
    paths += save(plots.bcrit_loss(an), folder, "batch_bcrit_loss")
    return [str(p) for p in paths]
