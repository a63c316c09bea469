"""Read a results table (a sweep folder or any CSV/Parquet file) into canonical columns.

A sweep folder holds ``results.parquet``/``results.csv`` (one row per point, see
ARCHITECTURE.md) and ``curves.parquet``/``curves.csv`` (long-format learning curves).
Any other table works too: say which columns hold N, D, C and the loss, or let the
loader find them among common names. The returned frame keeps every original column
and adds the canonical ones:

    N     parameters (non-embedding for this project's sweeps)
    D     training tokens
    C     training FLOPs (6 N D unless the table says otherwise)
    loss  the loss to fit (default: final_eval_loss, then final_train_loss, then loss)
    status  "done" when the table has no status column

A missing one of N, D, C is derived from C = 6 N D (recorded in ``df.attrs["derived"]``).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd

CANDIDATES = {
    "N": ("N", "n_params", "params", "parameters", "Model Size", "model_size", "non_embedding_params"),
    "D": ("D", "tokens", "n_tokens", "Training Tokens", "training_tokens", "data"),
    "C": ("C", "flops", "FLOPs", "compute", "Training FLOP", "training_flops"),
    "loss": ("final_eval_loss", "final_train_loss", "loss", "eval_loss", "val_loss",
             "train_loss", "final_loss"),
}
FITTED_STATUS = "done"


def _read_table(path: Path) -> pd.DataFrame:
    suf = path.suffix.lower()
    if suf == ".parquet":
        return pd.read_parquet(path)
    if suf in (".tsv", ".tab"):
        return pd.read_csv(path, sep="\t")
    return pd.read_csv(path)


def _find(df: pd.DataFrame, key: str, explicit: str | None) -> str | None:
    if explicit:
        if explicit in df.columns:
            return explicit
        close = difflib.get_close_matches(explicit, [str(c) for c in df.columns], n=3)
        raise KeyError(f"column {explicit!r} (for {key}) not in the table; "
                       f"closest: {close or 'none'}; columns: {list(df.columns)}")
    for cand in CANDIDATES[key]:
        if cand in df.columns and pd.to_numeric(df[cand], errors="coerce").notna().any():
            return cand
    lower = {str(c).lower(): c for c in df.columns}
    for cand in CANDIDATES[key]:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def results_path(path: str | Path) -> Path:
    """The table file of a sweep folder (results.parquet preferred) or the file itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p} is a folder without results.parquet or results.csv")
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    return p


def load_results(
    path: str | Path,
    *,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    status_col: str = "status",
) -> pd.DataFrame:
    """Load a sweep folder or a table and add canonical N, D, C, loss, status columns."""
    src = results_path(path)
    try:
        df = _read_table(src)
    except Exception as exc:  # parquet engine problems: fall back to the CSV twin
        twin = src.with_suffix(".csv")
        if src.suffix == ".parquet" and twin.exists():
            df = pd.read_csv(twin)
            src = twin
        else:
            raise exc
    df = df.copy()
    cols = {k: _find(df, k, v) for k, v in (("N", n_col), ("D", d_col), ("C", c_col), ("loss", loss_col))}
    if cols["loss"] is None:
        raise KeyError(f"no loss column found (tried {CANDIDATES['loss']}); pass loss_col=; "
                       f"columns: {list(df.columns)}")
    for key, col in cols.items():
        if col is not None:
            df[key] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if cols["loss"] in ("final_eval_loss",) and "final_train_loss" in df and loss_col is None:
        # a sweep whose evaluation was off: fall back row by row
        miss = df["loss"].isna()
        if miss.any():
            df.loc[miss, "loss"] = pd.to_numeric(df.loc[miss, "final_train_loss"], errors="coerce")
    derived = []
    have = {k for k in ("N", "D", "C") if cols[k] is not None}
    if "D" not in have and {"N", "C"} <= have:
        df["D"] = df["C"] / (6.0 * df["N"])
        derived.append("D = C / (6 N)")
    elif "N" not in have and {"D", "C"} <= have:
        df["N"] = df["C"] / (6.0 * df["D"])
        derived.append("N = C / (6 D)")
    elif "C" not in have and {"N", "D"} <= have:
        df["C"] = 6.0 * df["N"] * df["D"]
        derived.append("C = 6 N D")
    if status_col in df.columns:
        df["status"] = df[status_col].astype(str).str.strip().str.lower()
    else:
        df["status"] = FITTED_STATUS
    df.attrs = {
        "source": str(src),
        "folder": str(Path(path)) if Path(path).is_dir() else None,
        "columns": {k: v for k, v in cols.items()},
        "derived": derived,
    }
    return df


def done(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are fitted: status == 'done' with a finite positive loss."""
    m = (df["status"] == FITTED_STATUS) & np.isfinite(df["loss"]) & (df["loss"] > 0)
    out = df[m].copy()
    out.attrs = dict(df.attrs)
    return out


def load_curves(
    path: str | Path,
    *,
    results: pd.DataFrame | None = None,
    run_col: str = "point_id",
    prefer: str = "auto",
    min_evals: int = 4,
) -> pd.DataFrame | None:
    """Learning curves of a sweep folder (curves.parquet or curves.csv), or None.

    Adds a canonical ``loss`` column per run: the eval loss where the run has at least
    ``min_evals`` evaluations (``prefer="auto"`` or "eval"), otherwise the training loss
    smoothed with a centred moving average over 1/20 of the run. ``flops`` is derived as
    6 N tokens from ``results`` when missing.
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if not p.is_dir() and p.name not in ("results.csv", "results.parquet"):
        return None
    src = None
    for name in ("curves.parquet", "curves.csv"):
        if (folder / name).exists():
            src = folder / name
            break
    if src is None:
        return None
    try:
        cv = _read_table(src)
    except Exception:
        twin = folder / "curves.csv"
        if src.suffix == ".parquet" and twin.exists():
            cv = pd.read_csv(twin)
        else:
            raise
    return prepare_curves(cv, results=results, run_col=run_col, prefer=prefer, min_evals=min_evals)


def prepare_curves(cv: pd.DataFrame, *, results: pd.DataFrame | None = None,
                   run_col: str = "point_id", prefer: str = "auto", min_evals: int = 4,
                   loss_col: str | None = None) -> pd.DataFrame:
    """Canonicalise a long-format curves table (see :func:`load_curves`)."""
    cv = cv.copy()
    if run_col != "point_id":
        cv["point_id"] = cv[run_col]
    if "flops" not in cv and results is not None and "tokens" in cv:
        sizes = results.set_index("point_id")["N"] if "point_id" in results else None
        if sizes is not None:
            cv["flops"] = 6.0 * cv["point_id"].map(sizes) * cv["tokens"]
    if "tokens" not in cv and "flops" in cv and results is not None and "point_id" in results:
        cv["tokens"] = cv["flops"] / (6.0 * cv["point_id"].map(results.set_index("point_id")["N"]))
    parts = []
    for pid, c in cv.groupby("point_id", sort=False):
        c = c.sort_values("step" if "step" in c else "flops").copy()
        if loss_col is not None:
            c["loss"] = pd.to_numeric(c[loss_col], errors="coerce")
            c["loss_source"] = loss_col
        else:
            ev = c["eval_loss"] if "eval_loss" in c else pd.Series(np.nan, index=c.index)
            n_ev = int(np.isfinite(pd.to_numeric(ev, errors="coerce")).sum())
            use_eval = prefer == "eval" or (prefer == "auto" and n_ev >= min_evals)
            if use_eval and n_ev > 0:
                c = c[np.isfinite(pd.to_numeric(ev, errors="coerce"))].copy()
                c["loss"] = c["eval_loss"].astype(float)
                c["loss_source"] = "eval_loss"
            elif "train_loss" in c:
                w = max(1, len(c) // 20)
                c["loss"] = c["train_loss"].astype(float).rolling(w, center=True, min_periods=1).mean()
                c["loss_source"] = "train_loss (smoothed)"
            else:
                continue
        parts.append(c)
    if not parts:
        return cv.iloc[0:0]
    return pd.concat(parts, ignore_index=True)
