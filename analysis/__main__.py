"""Command line: fit a law to any CSV, or write a full report.

    python -m analysis fit --law chinchilla runs.csv --n-col "Model Size" --c-col "Training FLOP" \\
        --loss-col loss --drop-highest-loss 5 --json
    python -m analysis fit --law isoflop runs.csv --c-col compute_budget --n-col N --loss-col loss
    python -m analysis fit --law power runs.csv --x N --loss-col loss
    python -m analysis fit --law frontier curves.csv --run-col point_id --c-col flops --loss-col eval_loss
    python -m analysis analyze sweeps/my_sweep [--out report_dir]

``--law chinchilla`` is Chinchilla Approach 3, ``isoflop`` Approach 2 (rows grouped by the
compute column; N or D may be missing and is then derived from C = 6 N D), ``power`` a power
law of the loss in one column (``--x``), ``frontier`` the compute-efficient frontier of a
long-format learning-curve table, ``kaplan`` Kaplan et al.'s joint L(N, D). ``--json`` prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

LAWS = ("power", "frontier", "chinchilla", "isoflop", "kaplan")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit one law to a CSV/Parquet table")
    f.add_argument("table", help="CSV or Parquet file (or a sweep folder)")
    f.add_argument("--law", choices=LAWS, required=True)
    f.add_argument("--n-col", help="column holding N (parameters)")
    f.add_argument("--d-col", help="column holding D (tokens)")
    f.add_argument("--c-col", help="column holding C (FLOPs); for isoflop the budget grouping")
    f.add_argument("--loss-col", help="column holding the loss")
    f.add_argument("--status-col", default="status",
                   help="rows whose status is not 'done' are ignored (no such column: all rows)")
    f.add_argument("--x", choices=("N", "D", "C"), default=None,
                   help="power: the variable (default: N, else D, else C, whichever exists)")
    f.add_argument("--no-irreducible", action="store_true", help="power/frontier: fit (x_c/x)^alpha without E")
    f.add_argument("--envelope", action="store_true",
                   help="power: fit the Pareto front (lowest loss at <= x) instead of all rows")
    f.add_argument("--budget-col", help="isoflop: column with budget labels (default: group --c-col)")
    f.add_argument("--budget-tol", type=float, default=0.1,
                   help="isoflop: relative gap that separates budgets when grouping C (default 0.1)")
    f.add_argument("--run-col", default="point_id", help="frontier: run identifier column")
    f.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="drop the K rows with the highest loss first (Besiroglu et al. drop 5)")
    f.add_argument("--loss-fn", choices=("huber", "huber_nll", "l2"), default="huber",
                   help="huber (Hoffmann et al.), huber_nll (Besiroglu et al.'s Huber likelihood), l2")
    f.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss (default 1e-3)")
    f.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (0: none)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--predict", type=float, nargs="*", default=None, metavar="C",
                   help="chinchilla/isoflop: compute budgets to predict N_opt, D_opt (and loss) for")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    a = sub.add_parser("analyze", help="write a report folder (figures, tables, summary.md)")
    a.add_argument("source", help="sweep folder or results table")
    a.add_argument("--out", default=None, help="report folder (default: <sweep>/report or <csv stem>_report)")
    a.add_argument("--n-col")
    a.add_argument("--d-col")
    a.add_argument("--c-col")
    a.add_argument("--loss-col")
    a.add_argument("--n-boot", type=int, default=200)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--loss-fn", choices=("huber", "huber_nll", "l2"), default="huber")
    return ap


def _load(args) -> pd.DataFrame:
    from .load import load_results

    p = Path(args.table)
    if args.law == "frontier":
        from .load import _read_table, prepare_curves

        cv = _read_table(p) if p.is_file() else None
        if cv is None:
            raise SystemExit(f"{p}: frontier needs a curves table file")
        x = args.c_col or "flops"
        for col in (args.run_col, x):
            if col not in cv:
                raise SystemExit(f"{p}: no column {col!r}; columns: {list(cv.columns)}")
        cv = cv.rename(columns={x: "flops"}) if x != "flops" else cv
        return prepare_curves(cv, run_col=args.run_col, loss_col=args.loss_col)
    budget_is_c = args.law == "isoflop"
    df = load_results(p, n_col=args.n_col, d_col=args.d_col, c_col=args.c_col,
                      loss_col=args.loss_col, status_col=args.status_col)
    if budget_is_c and args.c_col is None and "C" not in df:
        raise SystemExit("isoflop needs a compute column (--c-col)")
    from .load import done

    df = done(df)
    if args.drop_highest_loss > 0:
        df = df.sort_values("loss").iloc[: -args.drop_highest_loss]
    return df


def _fit(args, df: pd.DataFrame) -> tuple[dict, str]:
    """Run the fit; return (JSON-able dict, human-readable text)."""
    from .result import fmt

    out: dict = {"law": args.law, "source": str(args.table), "n_rows": int(len(df))}
    opts = {"n_boot": args.n_boot, "seed": args.seed}
    if args.law == "chinchilla":
        from .chinchilla import fit_approach3

        fit = fit_approach3(df["N"], df["D"], df["loss"], loss_fn=args.loss_fn, delta=args.delta, **opts)
        names = ["E", "A", "B", "alpha", "beta", "a", "b", "G"] + (["sigma"] if "sigma" in fit.params else [])
        out.update(fit.to_dict())
        text = "Chinchilla Approach 3: L(N, D) = E + A/N^alpha + B/D^beta\n" + fit.describe(names)
        if args.predict:
            t = fit.optimal_table(args.predict)
            out["predictions"] = json.loads(t.to_json(orient="records"))
            text += "\n\n" + t.to_string(index=False, float_format=lambda v: fmt(v, 4))
    elif args.law == "kaplan":
        from .chinchilla import fit_kaplan

        fit = fit_kaplan(df["N"], df["D"], df["loss"], loss_fn=args.loss_fn, delta=args.delta, **opts)
        out.update(fit.to_dict())
        text = "Kaplan et al.: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D\n" + fit.describe()
    elif args.law == "isoflop":
        from .isoflop import fit_isoflop

        budget = df[args.budget_col] if args.budget_col else None
        has_n = df.attrs["columns"].get("N") is not None
        has_d = df.attrs["columns"].get("D") is not None
        if "C" not in df or not np.isfinite(df["C"]).any():
            raise SystemExit("isoflop: no compute column (pass --c-col)")
        fit = fit_isoflop(df["C"], df["loss"], N=df["N"] if has_n or "N" in df else None,
                          D=df["D"] if (has_d and not has_n) else None, budget=budget,
                          rel_tol=args.budget_tol, **opts)
        out.update(fit.to_dict())
        out["budgets"] = json.loads(fit.budgets.to_json(orient="records"))
        text = ("Chinchilla Approach 2 (IsoFLOP): N_opt = k_N C^a, D_opt = k_D C^b\n" + fit.describe()
                + "\n\nper-budget optima:\n"
                + fit.budgets.to_string(index=False, float_format=lambda v: fmt(v, 4)))
        if args.predict:
            n, d = fit.predict(np.asarray(args.predict, float))
            out["predictions"] = [{"C": c, "N_opt": a, "D_opt": b} for c, a, b in zip(args.predict, n, d)]
    elif args.law == "power":
        from .powerlaw import fit_power_law

        x = args.x or next((k for k in ("N", "D", "C") if k in df and df[k].notna().any()), None)
        if x is None or x not in df:
            raise SystemExit("power: no N, D or C column found; pass --n-col/--d-col/--c-col and --x")
        xs, ls = df[x].to_numpy(float), df["loss"].to_numpy(float)
        if args.envelope:
            from .report import pareto_front

            idx = pareto_front(xs, ls)
            xs, ls = xs[idx], ls[idx]
        fit = fit_power_law(xs, ls, irreducible=not args.no_irreducible, loss_fn=args.loss_fn,
                            delta=args.delta, name=x, **opts)
        out.update(fit.to_dict())
        out["x"] = x
        form = "E + (x_c/x)^alpha" if fit.irreducible else "(x_c/x)^alpha"
        text = f"power law L({x}) = {form}\n" + fit.describe()
    elif args.law == "frontier":
        from .frontier import fit_frontier

        fit = fit_frontier(df, irreducible=not args.no_irreducible, loss_fn=args.loss_fn, **opts)
        out.update(fit.to_dict())
        out["frontier"] = json.loads(fit.frontier.to_json(orient="records"))
        text = "compute-efficient frontier L(C) = E + (C_c/C)^alpha\n" + fit.describe()
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown law {args.law}")
    return out, text


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "analyze":
        from .report import analyze

        out = analyze(args.source, args.out, n_boot=args.n_boot, seed=args.seed, n_col=args.n_col,
                      d_col=args.d_col, c_col=args.c_col, loss_col=args.loss_col, loss_fn=args.loss_fn)
        print(out)
        return 0
    try:
        df = _load(args)
        out, text = _fit(args, df)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        if args.json:
            print(json.dumps({"law": args.law, "error": str(msg)}))
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, default=_default))
    else:
        print(f"{args.table}: {out['n_rows']} rows")
        print(text)
        if out.get("n_boot"):
            print(f"(95% bootstrap percentile intervals, {out['n_boot']} resamples)")
    return 0


def _default(o):
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
