"""Read a results table (a sweep folder or any CSV/Parquet file) into canonical columns.

A sweep folder holds ``results.parquet``/``results.csv`` (one row per point, see
ARCHITECTURE.md) and ``curves.parquet``/``curves.csv`` (long-format learning curves).
Any other table works too: say which columns hold N, D, C and the loss, or let the
loader find them among common names. The returned frame keeps every original column
and adds the canonical ones:

    N     parameters (non-embedding for this project's sweeps)
    D     training tokens
    C     training FLOPs (6 N D unless the table says otherwise)
    loss  the loss to fit (default: final_eval_loss, then final_train_loss, then loss: one
          column for the whole table; rows of a final_eval_loss table that lack it are not
          fitted and are counted, see :func:`load_results`)
    status  "done" when the table has no status column

A missing one of N, D, C is derived from C = 6 N D (recorded in ``df.attrs["derived"]``).

Compute accounting (``accounting=``; a table with an ``accounting`` column, from this
project's sweeps, defaults to its own value): ``total`` fits N := N_total (all parameters)
and C := C_exact (analytic training FLOPs, every matmul), as Chinchilla counts; ``kaplan``
fits N := N (non-embedding) and C := C_6ND (or C in tables older than that column). One
accounting per load, never a mix: rows planned under the other accounting keep their N and C
re-expressed in the chosen one, but lose their ``compute_budget`` label (their IsoFLOP
budget is not iso-FLOP in the chosen accounting). ``df.attrs["convention"]`` says which was
used, in words, for captions. A table without the column behaves as before (its N and C as
they are).

Bad input: a missing or empty file, a table without a loss column, a column named
explicitly but absent, all raise ``ValueError``/``FileNotFoundError``/``KeyError`` with a
message naming the file or column (the CLI turns them into one ``error:`` line, exit 2).
Rows (status done) whose N, D, C or loss is non-numeric, NaN, inf or not positive are not
fitted; they are counted per reason in ``df.attrs["dropped"]`` and reported.

A sweep folder whose results tables were deleted is rebuilt from its point folders
(``points/<id>/point.json``, ``result.json``, ``metrics.jsonl``) with plain JSON reading
(:func:`rebuild_from_points`), as ``run_sweep.py status`` would; the analysis never imports
``scaling``.
"""

from __future__ import annotations

import difflib
import json
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
NO_EVAL_NOTE = ("missing, final_train_loss present (not substituted: the train loss is another "
                "quantity; load_results(train_loss_fallback=True) fits it)")


def read_table(path: Path) -> pd.DataFrame:
    """A table file as a DataFrame: Parquet, TSV (.tsv, .tab) or CSV, by its suffix."""
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


ACCOUNTINGS = ("total", "kaplan")
CONVENTIONS = {
    "total": "accounting total: N = all parameters (N_total), C = C_exact (every matmul)",
    "kaplan": "accounting kaplan: N = non-embedding parameters, C = 6 N D",
}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rebuild_from_points(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(results, curves) of a sweep folder rebuilt from ``points/*/``: one row per point from
    point.json (the plan) updated by result.json (the outcome); status from result.json,
    else ``failed`` (failed.json) or ``pending``; an unreadable result.json gives status
    ``corrupt``. Curves from each metrics.jsonl (train rows carry ``loss``, eval rows
    ``eval_loss``). Raises FileNotFoundError when there are no point folders."""
    pts = Path(folder) / "points"
    dirs = sorted(p for p in pts.glob("*") if p.is_dir()) if pts.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"{folder} is a folder without results.parquet or results.csv "
                                "and without point folders (points/<id>/) to rebuild them from")
    rows, curves = [], []
    for d in dirs:
        meta = _read_json(d / "point.json") or {}
        row = {"sweep": Path(folder).name, "point_id": d.name}
        row.update({k: v for k, v in meta.items() if not isinstance(v, (dict, list))})
        res_path = d / "result.json"
        res = _read_json(res_path) if res_path.exists() else None
        if res_path.exists() and not isinstance(res, dict):
            row["status"] = "corrupt"
        elif isinstance(res, dict):
            row.update({k: v for k, v in res.items() if not isinstance(v, (dict, list))})
            row["status"] = res.get("status", "done")
        else:
            row["status"] = "failed" if (d / "failed.json").exists() else "pending"
        rows.append(row)
        curves.append(_curve_from_metrics(d))
    cv = [c for c in curves if c is not None and len(c)]
    return pd.DataFrame(rows), (pd.concat(cv, ignore_index=True) if cv else None)


def _curve_from_metrics(d: Path) -> pd.DataFrame | None:
    p = d / "metrics.jsonl"
    if not p.exists():
        return None
    by_step: dict = {}
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not isinstance(r, dict) or "step" not in r:
            continue
        e = by_step.setdefault(r["step"], {"point_id": d.name, "step": r["step"]})
        for k in ("tokens", "flops", "lr", "eval_loss", "eval_loss_stderr"):
            if k in r:
                e[k] = r[k]
        if "loss" in r:
            e["train_loss"] = r["loss"]
    return pd.DataFrame(list(by_step.values())) if by_step else None


def results_path(path: str | Path) -> Path:
    """The table file of a sweep folder (results.parquet preferred) or the file itself.
    A sweep folder without tables but with point folders returns the folder itself (the
    table is then rebuilt, :func:`rebuild_from_points`)."""
    p = Path(path)
    if p.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (p / name).exists():
                return p / name
        if (p / "points").is_dir():
            return p
        raise FileNotFoundError(f"{p} is a folder without results.parquet or results.csv "
                                "(and without points/ to rebuild them from)")
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    return p


def _separate_parametrizations(df: pd.DataFrame) -> None:
    """Runs of one optimizer under another parametrization (µP) are another arm of every
    optimizer comparison: their `optimizer` label gains it ("adamw+mup"), in place."""
    if "parametrization" not in df.columns or "optimizer" not in df.columns:
        return
    other = df["parametrization"].notna() & (df["parametrization"].astype(str) != "sp")
    if other.any():
        df.loc[other, "optimizer"] = (df.loc[other, "optimizer"].astype(str) + "+"
                                      + df.loc[other, "parametrization"].astype(str))


def _model_families(df: pd.DataFrame) -> None:
    """This project's tables (they have point_id) name each run's model family and
    objective (`arch`, `objective`); rows from before the columns existed are the
    transformer trained on next-token loss, filled in place so fits can group by family."""
    if "point_id" not in df.columns:
        return
    for col, before in (("arch", "transformer"), ("objective", "next_token")):
        if col not in df.columns:
            df[col] = before
        else:
            df[col] = df[col].where(df[col].notna() & (df[col].astype(str) != ""), before)


def load_results(
    path: str | Path,
    *,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    status_col: str = "status",
    accounting: str | None = None,
    train_loss_fallback: bool = False,
) -> pd.DataFrame:
    """Load a sweep folder or a table and add canonical N, D, C, loss, status columns
    under one compute ``accounting`` (see the module docstring).

    Done rows whose ``final_eval_loss`` is missing while ``final_train_loss`` is there are not
    fitted (counted in ``attrs["dropped"]`` under :data:`NO_EVAL_NOTE`, which the report's
    data section and ``fit`` print); ``train_loss_fallback=True`` fits their train loss
    instead and says so in ``attrs["derived"]``."""
    src = results_path(path)
    rebuilt = src.is_dir()
    if rebuilt:
        df, _ = rebuild_from_points(src)
    else:
        df = _read_any(src)
    if df.empty or len(df.columns) == 0:
        raise ValueError(f"{src}: the table is empty (no rows)")
    df = df.copy()
    _separate_parametrizations(df)
    _model_families(df)
    acc_notes: list[str] = []
    acc = _apply_accounting(df, accounting, n_col, c_col, acc_notes)
    if acc is not None:
        n_col = n_col or "_N_acc"
        c_col = c_col or ("_C_acc" if "_C_acc" in df else None)
    cols = {k: _find(df, k, v) for k, v in (("N", n_col), ("D", d_col), ("C", c_col), ("loss", loss_col))}
    if cols["loss"] is None:
        raise KeyError(f"{src}: no loss column (looked for {', '.join(CANDIDATES['loss'])}); "
                       f"pass --loss-col / loss_col=; columns: {list(df.columns)}")
    raw = {}
    for key, col in cols.items():
        if col is not None:
            raw[key] = df[col].replace(r"^\s*$", np.nan, regex=True) if df[col].dtype == object else df[col]
            df[key] = pd.to_numeric(df[col], errors="coerce").astype(float)
    # rows without an eval loss but with a train loss: the train loss is another quantity (the
    # training data, the last steps' running mean), so it is never substituted silently
    no_eval = pd.Series(False, index=df.index)
    if cols["loss"] == "final_eval_loss" and "final_train_loss" in df and loss_col is None:
        no_eval = df["loss"].isna() & pd.to_numeric(df["final_train_loss"], errors="coerce").notna()
        if train_loss_fallback and no_eval.any():
            df.loc[no_eval, "loss"] = pd.to_numeric(df.loc[no_eval, "final_train_loss"], errors="coerce")
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
    dropped = _bad_rows(df, raw, cols)
    n_no_eval = int((no_eval & (df["status"] == FITTED_STATUS)).sum())
    if n_no_eval and train_loss_fallback:
        derived.append(f"final_eval_loss missing in {n_no_eval} done row(s): final_train_loss used "
                       "there instead (another quantity; train_loss_fallback=True)")
    elif n_no_eval:
        key = "loss (final_eval_loss): missing/NaN"
        dropped[key] = dropped.get(key, 0) - n_no_eval
        if dropped[key] <= 0:
            del dropped[key]
        dropped[f"loss (final_eval_loss): {NO_EVAL_NOTE}"] = n_no_eval
    if rebuilt:
        derived.insert(0, "results table rebuilt from the point folders (results.csv/.parquet missing)")
    cols = {k: ("N_total" if v == "_N_acc" and acc == "total" else
                "C_exact" if v == "_C_acc" and acc == "total" else
                "N" if v == "_N_acc" else
                ("C_6ND" if "C_6ND" in df else "C") if v == "_C_acc" else v) for k, v in cols.items()}
    df.attrs = {
        "source": str(src) + (" (rebuilt from points/)" if rebuilt else ""),
        "folder": str(Path(path)) if Path(path).is_dir() else None,
        "columns": {k: v for k, v in cols.items()},
        "derived": derived + acc_notes,
        "accounting": acc,
        "convention": CONVENTIONS[acc] if acc else
        "accounting as in the table (N ← {}, C ← {})".format(cols.get("N"), cols.get("C")),
        "dropped": dropped,
    }
    return df


def _read_any(src: Path) -> pd.DataFrame:
    try:
        return read_table(src)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{src}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{src}: not a readable CSV table ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # parquet engine problems: fall back to the CSV twin
        twin = src.with_suffix(".csv")
        if src.suffix == ".parquet" and twin.exists():
            return _read_any(twin)
        raise ValueError(f"{src}: could not read the table ({type(exc).__name__}: {exc})") from None


def _apply_accounting(df: pd.DataFrame, accounting: str | None, n_col, c_col, notes: list[str]) -> str | None:
    """Add ``_N_acc``/``_C_acc`` columns under the chosen accounting; return it (None: the
    table has no accounting column and none was asked for)."""
    if accounting is not None and accounting not in ACCOUNTINGS:
        raise ValueError(f"accounting must be one of {', '.join(ACCOUNTINGS)}, got {accounting!r}")
    have = "accounting" in df.columns
    if not have and accounting is None:
        return None
    if accounting is None:
        vals = sorted(set(df["accounting"].dropna().astype(str)))
        bad = [v for v in vals if v not in ACCOUNTINGS]
        if bad:
            raise ValueError(f"column accounting holds {bad}; allowed: {', '.join(ACCOUNTINGS)}")
        if len(vals) > 1:
            raise ValueError(f"the table mixes accountings {vals}: pass --accounting total or kaplan "
                             "(a fit never mixes them)")
        accounting = vals[0] if vals else "total"
    need = {"total": ("N_total", "C_exact"), "kaplan": ("N", None)}[accounting]
    for c in need:
        if c is not None and c not in df.columns:
            raise KeyError(f"accounting {accounting} needs column {c!r}, which the table lacks; "
                           f"columns: {list(df.columns)}")
    if accounting == "total":
        df["_N_acc"] = pd.to_numeric(df["N_total"], errors="coerce")
        df["_C_acc"] = pd.to_numeric(df["C_exact"], errors="coerce")
    else:
        df["_N_acc"] = pd.to_numeric(df["N"], errors="coerce")
        c = "C_6ND" if "C_6ND" in df.columns else ("C" if "C" in df.columns else None)
        if c is None and "D" in df.columns:
            df["_C_acc"] = 6.0 * df["_N_acc"] * pd.to_numeric(df["D"], errors="coerce")
        elif c is not None:
            df["_C_acc"] = pd.to_numeric(df[c], errors="coerce")
    if have and "compute_budget" in df.columns:
        other = df["accounting"].notna() & (df["accounting"].astype(str) != accounting)
        if other.any():
            df.loc[other, "compute_budget"] = np.nan
            notes.append(f"{int(other.sum())} row(s) planned under another accounting: their IsoFLOP "
                         f"budget labels are dropped (not iso-FLOP under {accounting})")
    return accounting


def _bad_rows(df: pd.DataFrame, raw: dict, cols: dict) -> dict[str, int]:
    """Count done rows whose N, D, C or loss is unusable, by reason ("loss: non-numeric")."""
    isdone = df["status"] == FITTED_STATUS
    out: dict[str, int] = {}
    for key in ("N", "D", "C", "loss"):
        if key not in df:
            continue
        v = df[key]
        orig = raw.get(key)
        nonnum = v.isna() & orig.notna() if orig is not None else pd.Series(False, index=df.index)
        nan = v.isna() & ~nonnum
        inf = np.isinf(v)
        neg = v <= 0
        for why, m in (("non-numeric", nonnum), ("missing/NaN", nan), ("inf", inf), ("zero or negative", neg)):
            k = int((m & isdone).sum())
            if k:
                out[f"{key} ({cols.get(key) or 'derived'}): {why}"] = k
    return out


def describe_dropped(df: pd.DataFrame) -> str:
    """One line on the done rows that cannot be fitted, or '' when there are none."""
    d = df.attrs.get("dropped") or {}
    if not d:
        return ""
    return "rows not fitted: " + "; ".join(f"{k} in {v} row{'s' if v > 1 else ''}" for k, v in d.items())


def done(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are fitted: status == 'done' with a finite positive loss."""
    m = (df["status"] == FITTED_STATUS) & np.isfinite(df["loss"]) & (df["loss"] > 0)
    for key in ("N", "D", "C"):
        if key in df and df[key].notna().any():
            m &= np.isfinite(df[key]) & (df[key] > 0)
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
        if p.is_dir() and (folder / "points").is_dir():
            cv = rebuild_from_points(folder)[1]
            return None if cv is None else prepare_curves(cv, results=results, run_col=run_col,
                                                           prefer=prefer, min_evals=min_evals)
        return None
    try:
        cv = read_table(src)
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
    if (results is not None and results.attrs.get("accounting") and "tokens" in cv
            and {"point_id", "C", "D"} <= set(results.columns)):
        # the training loop logs 6 N_non-embedding tokens; under the table's chosen accounting a
        # run's compute per token is its C / D (C_exact / D under total), so the curves use that
        per_token = (results["C"] / results["D"]).where(results["D"] > 0)
        rate = cv["point_id"].map(dict(zip(results["point_id"], per_token)))
        cv["flops"] = np.where(np.isfinite(rate), cv["tokens"] * rate, cv.get("flops", np.nan))
        cv.attrs["flops"] = f"tokens x C / D of each run ({results.attrs['accounting']} accounting)"
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
