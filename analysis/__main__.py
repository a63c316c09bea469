"""Command line: fit a law to any CSV, or write a full report.

    python -m analysis fit --law chinchilla runs.csv --n-col "Model Size" --c-col "Training FLOP" \\
        --loss-col loss --drop-highest-loss 5 --json
    python -m analysis fit --law isoflop runs.csv --c-col compute_budget --n-col N --loss-col loss
    python -m analysis fit --law power runs.csv --x N --loss-col loss
    python -m analysis fit --law frontier curves.csv --run-col point_id --c-col flops --loss-col eval_loss
    python -m analysis analyze sweeps/my_sweep [--out report_dir]
    python -m analysis lr-law sweeps/my_lr_sweep [--accounting total] [--json]
    python -m analysis fit --law auto runs.csv --predict-at 1e9:2e10 7e10:1.4e12 [--json]
    python -m analysis backtest runs.csv [--holdout-top 0.25 | --fit-below-N N | --fit-below-C C]
    python -m analysis batch sweeps/my_batch_sweep [--targets 3.2,3.0] [--json] [--out DIR]

``--law chinchilla`` is Chinchilla Approach 3, ``isoflop`` Approach 2 (rows grouped by the
compute column; N or D may be missing and is then derived from C = 6 N D), ``power`` a power
law of the loss in one column (``--x``), ``frontier`` the compute-efficient frontier of a
long-format learning-curve table, ``kaplan`` Kaplan et al.'s joint L(N, D), ``shared`` and
``datacon`` the other laws of L(N, D) (analysis/fits/ndlaws.py), ``auto`` the L(N, D) law with the
smallest backtest error. ``--predict-at N:D`` (laws of N and D) predicts the loss of given runs
with a prediction interval; ``backtest`` scores each law's extrapolation (analysis/cli_predict.py,
analysis/fits/backtest.py). ``batch`` is the critical batch size (B in tokens) across a
batch-size sweep (analysis/cli_batch.py, analysis/batch.py). ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cli_predict import add_backtest_parser, add_fit_args, add_predictions, backtest_main, check_args
from analysis.cli_checks import check_fit_options, check_fit_rows
from analysis.cli_batch import add_batch_parser, batch_main
from analysis.result import json_default
from analysis.load import CANDIDATES

LAWS = ("power", "frontier", "chinchilla", "isoflop", "kaplan", "shared", "datacon", "auto")
SEED_NOISE_HELP = ("relative seed-to-seed sd of one run's loss measured elsewhere (e.g. 0.003), used "
                   "only where the sweep has no repeated seeds (analysis/noise.py)")
SEED_CORR_HELP = ("fraction of the seed variance shared by the runs of one trajectory (same size "
                  "and seed: a trunk's cooldown branches; default 1, 0: independent per run; "
                  "analysis/noise.py)")


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
    f.add_argument("--accounting", choices=("total", "kaplan"), default=None,
                   help="compute accounting: total (N = all parameters, C = C_exact) or kaplan "
                        "(N non-embedding, C = 6ND); default: the table's own (tables without an "
                        "accounting column: N and C as they are)")
    f.add_argument("--bootstrap", choices=("auto", "noise", "cases"), default="auto",
                   help="chinchilla/isoflop intervals: noise (design fixed, each run's loss perturbed "
                        "by its noise), cases (runs resampled); auto: noise where the table measures "
                        "noise (eval_loss_stderr) or is a designed sweep (compute_budget), else cases")
    f.add_argument("--estimator", choices=("auto", "parabola", "akima", "local"), default=None,
                   help="isoflop: estimator of each budget's minimum (default: auto, chosen per fit, "
                        "with the reason, see analysis/fits/isoflop_choice.py); all three are reported")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    add_fit_args(f)  # --predict-at, --u-col
    f.add_argument("--seed-noise", type=float, default=None, metavar="REL", help=SEED_NOISE_HELP)
    f.add_argument("--seed-corr", type=float, default=1.0, metavar="RHO", help=SEED_CORR_HELP)
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
    a.add_argument("--accounting", choices=("total", "kaplan"), default=None,
                   help="compute accounting (default: the table's own); the report says which")
    a.add_argument("--ngram", action="append", default=None,
                   help="an n-gram result (folder or result.json) to draw as a reference line")
    a.add_argument("--seed-noise", type=float, default=None, metavar="REL", help=SEED_NOISE_HELP)
    a.add_argument("--seed-corr", type=float, default=1.0, metavar="RHO", help=SEED_CORR_HELP)
    lw = sub.add_parser("lr-law", help="fit lr*(N) from a learning-rate grid; print the spec's lr_law line")
    lw.add_argument("source", help="sweep folder or results table with several lrs per size")
    lw.add_argument("--accounting", choices=("total", "kaplan"), default=None,
                    help="N of the law: total (all parameters) or kaplan (non-embedding); default: "
                         "the table's own")
    lw.add_argument("--n-boot", type=int, default=200)
    lw.add_argument("--seed", type=int, default=0)
    lw.add_argument("--json", action="store_true", help="print one JSON object")
    add_backtest_parser(sub)
    add_batch_parser(sub)
    return ap


def _lr_law(args) -> int:
    """`lr-law`: see analysis/lrlaw.py. Exit 2 with one error line when no law can be fitted."""
    from analysis.lrlaw import describe, fit_lr_law, load_for_lr_law

    try:
        df = load_for_lr_law(args.source, args.accounting)
        res = fit_lr_law(df, n_boot=args.n_boot, seed=args.seed)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        msg = str(exc.args[0] if exc.args else exc)
        print(json.dumps({"error": msg}) if args.json else f"error: {msg}",
              file=sys.stdout if args.json else sys.stderr)
        return 2
    acc = df.attrs.get("accounting")
    out = {"source": str(args.source), "accounting": acc, "convention": df.attrs.get("convention"),
           "N": {"total": "N_total", "kaplan": "N_non_embedding"}.get(acc or "", "N as in the table"),
           "trunks_excluded": df.attrs.get("n_trunks", 0), "laws": res}
    if args.json:
        print(json.dumps(out, default=json_default))
    else:
        print(describe(res, df.attrs.get("convention", ""), acc))
    if all("error" in r for r in res):
        if not args.json:
            print("error: no learning-rate law: " + "; ".join(f"{r['optimizer']}: {r['error']}"
                                                             for r in res), file=sys.stderr)
        return 2
    return 0


def _load(args) -> pd.DataFrame:
    from analysis.load import load_results

    p = Path(args.table)
    if args.law == "frontier":
        from analysis.load import prepare_curves, read_table

        cv = read_table(p) if p.is_file() else None
        if cv is None:
            raise FileNotFoundError(f"{p}: frontier needs a curves table file (no such file)")
        x = args.c_col or "flops"
        for col in (args.run_col, x):
            if col not in cv:
                raise KeyError(f"{p}: no column {col!r}; columns: {list(cv.columns)}")
        cv = cv.rename(columns={x: "flops"}) if x != "flops" else cv
        return prepare_curves(cv, run_col=args.run_col, loss_col=args.loss_col)
    budget_is_c = args.law == "isoflop"
    df = load_results(p, n_col=args.n_col, d_col=args.d_col, c_col=args.c_col,
                      loss_col=args.loss_col, status_col=args.status_col, accounting=args.accounting)
    if budget_is_c and args.c_col is None and "C" not in df:
        raise ValueError("isoflop needs a compute column: none found (looked for "
                         + ", ".join(CANDIDATES["C"]) + "); pass --c-col")
    from analysis.load import describe_dropped, done

    full = df
    if "point_id" in df:  # a sweep's table: the rows `analyze` fits (analysis/fitrows.py)
        from analysis.fitrows import select_fit_rows

        sel = select_fit_rows(df)
        df = sel.rows
        df.attrs["left_out"] = sel.left_out()
    else:
        df = done(df)
    df.attrs["n_rows_table"] = int(len(full))
    df.attrs["dropped_line"] = describe_dropped(full)
    if len(df) == 0:
        raise ValueError(f"{p}: no row can be fitted ({len(full)} rows; "
                         + (describe_dropped(full) or "none has status done") + ")")
    check_fit_rows(args, df)  # too few rows for the law, or for --drop-highest-loss
    if args.drop_highest_loss > 0:
        df = df.sort_values("loss").iloc[: -args.drop_highest_loss]
    return df


def _fit(args, df: pd.DataFrame) -> tuple[dict, str]:
    """Run the fit; return (JSON-able dict, human-readable text)."""
    from analysis.result import fmt

    out: dict = {"law": args.law, "source": str(args.table), "n_rows": int(len(df)),
                 "n_rows_table": df.attrs.get("n_rows_table", len(df)),
                 "accounting": df.attrs.get("accounting"), "convention": df.attrs.get("convention")}
    if df.attrs.get("dropped"):
        out["rows_not_fitted"] = df.attrs["dropped"]
    if df.attrs.get("left_out"):
        out["left_out"] = df.attrs["left_out"]
    opts = {"n_boot": args.n_boot, "seed": args.seed}
    boot, noise = _bootstrap_choice(args, df)
    if noise is not None and args.law in ("chinchilla", "kaplan", "isoflop"):
        out["noise_model"] = noise.sentence
    if args.law in ("chinchilla", "kaplan", "shared", "datacon", "auto"):
        _require(df, ("N", "D"), args.law)
    c_rows = df["C"] if "C" in df and np.isfinite(pd.to_numeric(df["C"], errors="coerce")).all() else None
    if args.law == "chinchilla":
        from analysis.fits.chinchilla import fit_approach3

        fit = fit_approach3(df["N"], df["D"], df["loss"], loss_fn=args.loss_fn, delta=args.delta,
                            bootstrap=boot, noise=noise, C=c_rows, **opts)
        names = ["E", "A", "B", "alpha", "beta", "a", "b", "G"] + (["sigma"] if "sigma" in fit.params else [])
        out.update(fit.to_dict())
        text = "Chinchilla Approach 3: L(N, D) = E + A/N^alpha + B/D^beta\n" + fit.describe(names)
        if fit.unidentified:
            red = fit.info.get("reduced_model")
            text += "\n" + fit.info["conditional"] + "."
            if red:
                text += (f"\nreduced model {red['form']}: alpha = {red['alpha']:.4g}, beta = "
                         f"{red['beta']:.4g}, a = {red['a']:.4g}; objective {red['objective']:.4g} vs "
                         f"{red['objective_full']:.4g} with E")
        if args.predict:
            t = fit.optimal_table(args.predict)
            out["predictions"] = json.loads(t.to_json(orient="records"))
            text += "\n\n" + t.to_string(index=False, float_format=lambda v: fmt(v, 4))
        text = add_predictions(fit, args, out, text)
    elif args.law == "kaplan":
        from analysis.fits.chinchilla import fit_kaplan

        fit = fit_kaplan(df["N"], df["D"], df["loss"], loss_fn=args.loss_fn, delta=args.delta,
                         bootstrap=boot, noise=noise, C=c_rows, **opts)
        out.update(fit.to_dict())
        text = "Kaplan et al.: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D\n" + fit.describe()
        text = add_predictions(fit, args, out, text)
    elif args.law in ("shared", "datacon", "auto"):
        from analysis.cli_predict import fit_nd

        fit, more, text = fit_nd(args, df, boot, noise)
        out.update(more)
        text = add_predictions(fit, args, out, text)
    elif args.law == "isoflop":
        from analysis.fits.isoflop import fit_isoflop

        bcol = args.budget_col or (df.attrs.get("budget_col") if args.c_col is None else None)
        budget = df[bcol] if bcol else None
        has_n = df.attrs["columns"].get("N") is not None
        if "C" not in df or not np.isfinite(df["C"]).any():
            raise ValueError("isoflop: no compute column (pass --c-col)")
        from analysis.fits.isoflop import DEFAULT_ESTIMATOR

        fit = fit_isoflop(df["C"], df["loss"], N=df["N"] if has_n or "N" in df else None,
                          D=df["D"] if ("D" in df and df["D"].notna().all()) else None, budget=budget,
                          rel_tol=args.budget_tol, bootstrap=boot, noise=noise,
                          estimator=args.estimator or DEFAULT_ESTIMATOR, **opts)
        out.update(fit.to_dict())
        out["budgets"] = json.loads(fit.budgets.to_json(orient="records"))
        head = (f"Chinchilla Approach 2 (IsoFLOP): N_opt = k_N C^a, D_opt = k_D C^b; minima by "
                f"{fit.info['estimator']}; {fit.info['n_budgets_used']} of {fit.info['n_budgets']} "
                "budgets bracket their minimum\n" + f"estimator: {fit.info['estimator_choice']}\n")
        if fit.determined:
            body = fit.describe()
            wt = fit.estimators[fit.info["estimator"]]["weighted"]
            body += (f"\n  (a, b: the unweighted line through the minima; weighted by each budget's "
                     f"propagated noise: a = {fmt(wt['a'], 4)}, b = {fmt(wt['b'], 4)})")
            for e, d in fit.estimators.items():
                if e != fit.info["estimator"]:
                    lo, hi = d["ci"].get("a", (math.nan, math.nan))
                    body += f"\n  ({e}: a = {fmt(d['a'], 4)} [{fmt(lo, 4)}, {fmt(hi, 4)}])"
            for line in fit.info.get("disagreement", []):
                body += "\n  warning: " + line
        else:
            body = "a, b: " + fit.info["not_determined"]
        text = (head + body + "\n\nper-budget optima:\n"
                + fit.budgets.to_string(index=False, float_format=lambda v: fmt(v, 4)))
        if args.predict and fit.determined:
            n, d = fit.predict(np.asarray(args.predict, float))
            out["predictions"] = [{"C": c, "N_opt": a, "D_opt": b} for c, a, b in zip(args.predict, n, d)]
    elif args.law == "power":
        from analysis.fits.powerlaw import fit_power_law

        x = args.x or next((k for k in ("N", "D", "C") if k in df and df[k].notna().any()), None)
        if x is None or x not in df or not df[x].notna().any():
            raise ValueError(f"power: no usable {args.x or 'N, D or C'} column (looked for "
                             + "; ".join(f"{k}: {', '.join(CANDIDATES[k])}" for k in ("N", "D", "C"))
                             + "); pass --n-col/--d-col/--c-col and --x")
        xs, ls = df[x].to_numpy(float), df["loss"].to_numpy(float)
        if args.envelope:
            from analysis.fits.pareto import pareto_front

            idx = pareto_front(xs, ls)
            xs, ls = xs[idx], ls[idx]
        fit = fit_power_law(xs, ls, irreducible=not args.no_irreducible, loss_fn=args.loss_fn,
                            delta=args.delta, name=x, **opts)
        out.update(fit.to_dict())
        out["x"] = x
        form = "E + (x_c/x)^alpha" if fit.irreducible else "(x_c/x)^alpha"
        text = f"power law L({x}) = {form}\n" + fit.describe()
    elif args.law == "frontier":
        from analysis.fits.frontier import fit_frontier

        fit = fit_frontier(df, irreducible=not args.no_irreducible, loss_fn=args.loss_fn, **opts)
        out.update(fit.to_dict())
        out["frontier"] = json.loads(fit.frontier.to_json(orient="records"))
        text = "compute-efficient frontier L(C) = E + (C_c/C)^alpha\n" + fit.describe()
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown law {args.law}")
    return out, text


def _require(df: pd.DataFrame, keys, law: str) -> None:
    """Name the missing column (and what would derive it) instead of a bare KeyError."""
    for k in keys:
        if k not in df or not df[k].notna().any():
            alt = {"D": "or C (FLOPs, then D = C / (6 N))", "N": "or C (FLOPs, then N = C / (6 D))",
                   "C": ""}[k]
            raise ValueError(f"--law {law} needs column {k} ({'tokens' if k == 'D' else 'parameters'}) "
                             f"{alt}: none found (looked for {', '.join(CANDIDATES[k])}); pass "
                             f"--{k.lower()}-col")


def _bootstrap_choice(args, df: pd.DataFrame):
    """(bootstrap kind, noise) for chinchilla/isoflop; see --bootstrap."""
    from analysis.noise import noise_model

    measured = "eval_loss_stderr" in df and pd.to_numeric(df["eval_loss_stderr"], errors="coerce").notna().any()
    designed = "compute_budget" in df and pd.to_numeric(df["compute_budget"], errors="coerce").notna().any()
    kind = args.bootstrap
    if kind == "auto":
        kind = "noise" if (measured or designed or args.law == "isoflop") else "cases"
    return kind, (noise_model(df, df.attrs.get("folder"), seed_noise=args.seed_noise,
                                    seed_corr=args.seed_corr) if measured else None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "seed_noise", None) is not None and not 0 <= args.seed_noise < 1:
        print(f"error: --seed-noise = {args.seed_noise}: a relative sd in [0, 1) (e.g. 0.003 for 0.3 %)",
              file=sys.stderr)
        return 2
    if getattr(args, "seed_corr", None) is not None and not 0 <= args.seed_corr <= 1:
        print(f"error: --seed-corr = {args.seed_corr}: a fraction of the seed variance in [0, 1]",
              file=sys.stderr)
        return 2
    if args.cmd == "lr-law":
        return _lr_law(args)
    if args.cmd == "backtest":
        return backtest_main(args)
    if args.cmd == "batch":
        return batch_main(args)
    bad = (check_args(args) or check_fit_options(args)) if args.cmd == "fit" else None
    if bad:
        print(json.dumps({"law": args.law, "error": bad}) if args.json else f"error: {bad}",
              file=sys.stdout if args.json else sys.stderr)
        return 2
    if args.cmd == "analyze":
        from analysis.report.build import analyze

        try:
            out = analyze(args.source, args.out, n_boot=args.n_boot, seed=args.seed, n_col=args.n_col,
                          d_col=args.d_col, c_col=args.c_col, loss_col=args.loss_col,
                          loss_fn=args.loss_fn, accounting=args.accounting, ngram=args.ngram,
                          seed_noise=args.seed_noise, seed_corr=args.seed_corr)
        except (KeyError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        print(f"report: {out}")
        return 0
    df = None
    try:
        df = _load(args)
        out, text = _fit(args, df)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        msg = str(exc.args[0] if exc.args else exc)
        if df is not None and df.attrs.get("dropped_line"):
            msg += f" ({len(df)} of {df.attrs.get('n_rows_table')} rows usable; {df.attrs['dropped_line']})"
        if args.json:
            print(json.dumps({"law": args.law, "error": str(msg)}))
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, default=json_default))
    else:
        print(f"{args.table}: {out['n_rows']} rows fitted of {out['n_rows_table']}; {out['convention']}")
        if df.attrs.get("dropped_line"):
            print(df.attrs["dropped_line"])
        for note in df.attrs.get("left_out", []):
            print(f"rows: {note}")
        print(text)
        if out.get("n_boot"):
            info = out.get("info", {})
            how = info.get("bootstrap", "cases")
            src = f"; noise: {info['noise_source']}" if "noise_source" in info and str(how).startswith("noise") else ""
            print(f"(95% bootstrap percentile intervals: {how}, {out['n_boot']} replicates, "
                  f"{out.get('n_boot_failed', 0)} failed{src})")
        if out.get("noise_model"):
            print(out["noise_model"])
    return 0



if __name__ == "__main__":
    sys.exit(main())
