"""Checks of `python -m analysis fit` options and of the rows they leave: each bad input is
one line (the caller prints it and exits 2), found before any fit runs."""

from __future__ import annotations

import math

import pandas as pd


def check_fit_options(args) -> str | None:
    """The first bad numeric option of `fit` in one line, or None."""
    n_boot = getattr(args, "n_boot", 0)
    if n_boot is not None and n_boot < 0:
        return f"--n-boot = {n_boot}: expected an integer >= 0 (0: no bootstrap)"
    for opt, what in (("delta", "the Huber delta on log loss"),
                      ("budget_tol", "the relative gap that separates budgets")):
        v = getattr(args, opt, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            return f"--{opt.replace('_', '-')} = {v}: expected a finite number > 0 ({what})"
    k = getattr(args, "drop_highest_loss", 0)
    if k is not None and k < 0:
        return f"--drop-highest-loss = {k}: expected an integer >= 0"
    return None


def check_fit_rows(args, df: pd.DataFrame) -> None:
    """ValueError in one line when the options leave too few rows for the law (before the
    highest losses are dropped)."""
    k = getattr(args, "drop_highest_loss", 0) or 0
    if k and k >= len(df):
        raise ValueError(f"--drop-highest-loss = {k}: the table has {len(df)} row(s) that can "
                         f"be fitted; K must leave some (K < {len(df)})")
    if getattr(args, "law", None) == "isoflop" and len(df) - k < 3:
        raise ValueError(f"isoflop: {len(df) - k} row(s) to fit; a budget's minimum needs at "
                         "least 3 sizes at one compute budget")
