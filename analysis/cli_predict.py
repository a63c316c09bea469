"""The command line's prediction parts (used by analysis/__main__.py):

- ``fit --law {chinchilla,kaplan,shared,datacon,auto} TABLE --predict-at N:D [N:D ...]``: the
  loss of each target run with its prediction interval (analysis/fits/prediction.py); ``--json``:
  ``predictions: [{"N", "D", "C", "x_decades", "loss", "low", "high", "param_low",
  "param_high", "misspec_sd"}]`` and ``prediction`` (how the interval is made). With ``--predict
  C`` as well, the compute-optimal rows go to ``compute_optimal``.
- ``backtest TABLE [--holdout-top Q | --fit-below-N N | --fit-below-C C]``: analysis/fits/backtest.py.

Bad input (a target that is not N:D with finite positive numbers, a holdout share outside
(0, 1), a non-positive cut) is one line naming the option, exit 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fits.ndlaws import FORMS, ND_LAWS
from analysis.result import json_default

U_COLUMNS = ("unique_tokens", "U_D", "U", "max_unique_tokens")


def add_fit_args(f) -> None:
    """--predict-at and --u-col on the ``fit`` parser."""
    f.add_argument("--predict-at", nargs="+", default=None, metavar="N:D",
                   help="L(N, D) laws (chinchilla, kaplan, shared, datacon, auto): predict the loss "
                        "of runs with N parameters (the table's N convention) and D tokens, with a "
                        "95%% prediction interval (bootstrap + the law's misspecification)")
    f.add_argument("--u-col", default=None,
                   help="datacon: column of unique training tokens per run (default: "
                        + ", ".join(U_COLUMNS) + "; none: D' = D)")


def add_backtest_parser(sub) -> None:
    b = sub.add_parser("backtest", help="fit each L(N, D) law on the cheaper runs, predict the "
                       "most expensive ones: error and interval coverage per law")
    b.add_argument("table", help="CSV/Parquet table or sweep folder")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--holdout-top", type=float, default=None, metavar="Q",
                   help="hold out the most expensive share Q of the runs by compute (default 0.25)")
    g.add_argument("--fit-below-N", type=float, default=None, metavar="N", help="fit on runs with N below this")
    g.add_argument("--fit-below-C", type=float, default=None, metavar="C", help="fit on runs with C below this")
    b.add_argument("--laws", nargs="+", choices=ND_LAWS, default=list(ND_LAWS))
    for col in ("--n-col", "--d-col", "--c-col", "--loss-col", "--u-col"):
        b.add_argument(col)
    b.add_argument("--status-col", default="status")
    b.add_argument("--accounting", choices=("total", "kaplan"), default=None)
    b.add_argument("--drop-highest-loss", type=int, default=0, metavar="K")
    b.add_argument("--n-boot", type=int, default=100, help="bootstrap replicates per law (default 100)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true", help="print one JSON object")


def parse_targets(values) -> list[tuple[float, float]]:
    """'N:D' strings -> [(N, D)]; ValueError naming --predict-at otherwise."""
    out = []
    for v in values or []:
        parts = str(v).split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            n, d = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--predict-at: {v!r} is not N:D (two numbers, e.g. 1e9:2e10)") from None
        if not (math.isfinite(n) and math.isfinite(d) and n > 0 and d > 0):
            raise ValueError(f"--predict-at: {v!r}: N and D must be finite and positive")
        out.append((n, d))
    return out


def check_args(args) -> str | None:
    """The first bad option of ``fit``/``backtest`` in one line, or None."""
    try:
        if getattr(args, "predict_at", None) is not None:
            parse_targets(args.predict_at)
            if args.law not in ND_LAWS + ("auto",):
                return f"--predict-at: needs a law of (N, D) ({', '.join(ND_LAWS + ('auto',))}), not {args.law}"
    except ValueError as exc:
        return str(exc)
    q = getattr(args, "holdout_top", None)
    if q is not None and not (math.isfinite(q) and 0 < q < 1):
        return f"--holdout-top: must be a share in (0, 1), got {q}"
    for opt in ("fit_below_N", "fit_below_C"):
        v = getattr(args, opt, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"--{opt.replace('_', '-')}: must be a finite positive number, got {v}"
    if getattr(args, "cmd", None) == "backtest" and args.n_boot < 0:
        return f"--n-boot: must be >= 0, got {args.n_boot}"
    return None


def unique_tokens(df: pd.DataFrame, col: str | None):
    """The unique-token column as an array (None when absent; KeyError for a named missing one)."""
    if col is not None:
        if col not in df:
            raise KeyError(f"--u-col: no column {col!r}; columns: {list(df.columns)}")
        return pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    for c in U_COLUMNS:
        if c in df:
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(float)
            if np.any(np.isfinite(v) & (v > 0)):
                return np.where(v > 0, v, np.nan)
    return None


def compute_column(df: pd.DataFrame):
    if "C" in df and np.isfinite(pd.to_numeric(df["C"], errors="coerce")).all():
        return df["C"].to_numpy(float)
    return None


def fit_nd(args, df: pd.DataFrame, boot: str, noise) -> tuple[object, dict, str]:
    """Fit shared, datacon or auto for ``fit``; (fit, JSON-able dict, text)."""
    from analysis.fits.ndlaws import fit_auto, fit_law

    kw = dict(n_boot=args.n_boot, seed=args.seed, bootstrap=boot, noise=noise, delta=args.delta,
              loss_fn=args.loss_fn)
    U = unique_tokens(df, getattr(args, "u_col", None))
    C = compute_column(df)
    out: dict = {}
    if args.law == "auto":
        fit, rep = fit_auto(df["N"], df["D"], df["loss"], C=C, U=U, **kw)
        out.update(fit.to_dict())
        out.update({"chosen": rep["chosen"], "why": rep["why"], "candidates": rep["candidates"]})
        head = f"auto: chose {rep['chosen']} ({FORMS[rep['chosen']]}): {rep['why']}\n"
        for name, r in rep["candidates"].items():
            be = r.get("backtest_error")
            head += (f"  {name:>10s}: backtest error {be * 100:.3g} % over {r['n_predictions']} predictions\n"
                     if be is not None and math.isfinite(be) else f"  {name:>10s}: {r.get('note') or r.get('error')}\n")
        text = head + fit.describe()
    else:
        fit = fit_law(args.law, df["N"], df["D"], df["loss"], C=C, U=U, **kw)
        out.update(fit.to_dict())
        text = f"{args.law}: L(N, D) = {FORMS[args.law]}\n" + fit.describe()
        if "datacon" in fit.info:
            text += f"\n({fit.info['datacon']})"
    return fit, out, text


def add_predictions(fit, args, out: dict, text: str) -> str:
    """--predict-at: per target the loss with its prediction interval (JSON and text)."""
    if not getattr(args, "predict_at", None):
        return text
    targets = parse_targets(args.predict_at)
    N = np.array([t[0] for t in targets])
    D = np.array([t[1] for t in targets])
    p = fit.predict_loss(N, D, level=fit.level)
    if "predictions" in out:  # --predict's compute-optimal rows
        out["compute_optimal"] = out.pop("predictions")
    out["predictions"] = p.records()
    out["prediction"] = fit.prediction_info()
    ms = fit.misspec
    lines = [f"\npredicted loss, {fit.level:.0%} prediction interval (parameters: bootstrap "
             f"percentiles; misspecification: {ms.how if ms else 'none'}; "
             f"{(fit.c_relation.source if fit.c_relation else 'C = 6 N D')}):"]
    for r in p.records():
        where = (f"{r['x_decades']:.2g} decades beyond the largest fitted C" if r["x_decades"] > 0
                 else "within the fitted compute range")
        par = (f"parameters alone [{r['param_low']:.4g}, {r['param_high']:.4g}]"
               if r["param_low"] is not None else "no bootstrap")
        lines.append(f"  N = {r['N']:.4g}, D = {r['D']:.4g} (C = {r['C']:.3g}, {where}): loss "
                     f"{r['loss']:.4f} [{r['low']:.4f}, {r['high']:.4f}]; {par}; misspecification "
                     f"sd {r['misspec_sd'] * 100:.2g} % (log loss)")
    return text + "\n".join(lines)


def load_rows(args) -> pd.DataFrame:
    """The rows a backtest fits: the same selection as ``analyze`` and ``fit``
    (analysis/fitrows.py: trunks out, done rows, one family and optimizer, seed cells)."""
    from analysis.fitrows import select_fit_rows
    from analysis.load import describe_dropped, load_results

    p = Path(args.table)
    df = load_results(p, n_col=args.n_col, d_col=args.d_col, c_col=args.c_col,
                      loss_col=args.loss_col, status_col=args.status_col, accounting=args.accounting)
    attrs = dict(df.attrs)
    sel = select_fit_rows(df)
    rows = sel.rows.copy()
    rows.attrs = attrs
    rows.attrs["left_out"] = sel.left_out()
    if len(rows) == 0:
        raise ValueError(f"{p}: no row can be fitted ({describe_dropped(df) or 'none has status done'})")
    for k in ("N", "D", "C"):
        if k not in rows or not np.isfinite(pd.to_numeric(rows[k], errors="coerce")).all():
            if k == "C" and "N" in rows and "D" in rows:
                rows["C"] = 6.0 * rows["N"] * rows["D"]
                rows.attrs.setdefault("derived", []).append("C = 6 N D (no compute column)")
                continue
            raise ValueError(f"{p}: backtest needs finite {k} on every row (pass --{k.lower()}-col)")
    if args.drop_highest_loss > 0:
        rows = rows.sort_values("loss").iloc[: -args.drop_highest_loss]
    return rows


def backtest_main(args) -> int:
    from analysis.fits.backtest import describe, run_backtest
    from analysis.noise import loss_noise

    bad = check_args(args)
    try:
        if bad:
            raise ValueError(bad)
        rows = load_rows(args)
        measured = "eval_loss_stderr" in rows and pd.to_numeric(rows["eval_loss_stderr"], errors="coerce").notna().any()
        designed = "compute_budget" in rows and pd.to_numeric(rows["compute_budget"], errors="coerce").notna().any()
        boot = "noise" if (measured or designed) else "cases"
        noise = loss_noise(rows).sigma if measured else None
        res = run_backtest(rows, laws=args.laws, holdout_top=args.holdout_top, fit_below_N=args.fit_below_N,
                           fit_below_C=args.fit_below_C, n_boot=args.n_boot, seed=args.seed,
                           bootstrap=boot, noise=noise, U=unique_tokens(rows, args.u_col))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        msg = str(exc.args[0] if exc.args else exc)
        if args.json:
            print(json.dumps({"error": msg}))
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    res.update({"source": str(args.table), "convention": rows.attrs.get("convention"),
                "accounting": rows.attrs.get("accounting"), "n_rows": int(len(rows))})
    if args.json:
        print(json.dumps(res, default=json_default))
    else:
        print(f"{args.table}: {len(rows)} rows; {rows.attrs.get('convention')}")
        for note in rows.attrs.get("left_out", []):
            print(f"({note})")
        print(describe(res))
    return 0

