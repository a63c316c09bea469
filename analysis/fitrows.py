"""The rows the scaling-law fits read: one selection for ``analyze`` and ``fit`` (issue 25).

From a table loaded by :func:`analysis.load.load_results`, :func:`select_fit_rows`:

1. leaves out cooldown trunks (:mod:`analysis.branches`: a trunk runs at a constant learning
   rate and is a source of branches, not a result) and validation runs
   (:mod:`analysis.validation`: they test the fits);
2. keeps the done rows with a finite positive loss, N, D and C (:func:`analysis.load.done`;
   the loader counts the others by reason);
3. :func:`scaling_rows`: one model family and one optimizer (the one with the lowest loss at
   the largest compute), and one row per (N, D) cell: seeds averaged, the best learning rate.

Every step that leaves rows out says so in ``notes`` (the report's data section, ``fit``'s
output). ``rows.attrs["budget_col"]`` names the IsoFLOP budget labels (``compute_budget``)
where the table has them: ``analyze`` groups IsoFLOP budgets by them, and so does ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import families as fam
from analysis.branches import TRUNK_NOTE, annotate_roles, drop_trunks, is_trunk
from analysis.load import done as done_rows
from analysis.noise import seed_cells
from analysis.result import sig
from analysis.validation import VALIDATION_NOTE, drop_validation


def reference_optimizer(done: pd.DataFrame) -> str | None:
    """With several optimizers: the one whose best run at the largest compute has the lowest
    loss (the scaling laws are then those of the best optimizer); None with one."""
    if "optimizer" not in done or done["optimizer"].nunique() < 2:
        return None
    d = done[np.isfinite(done["loss"])]
    top = d[d["C"] >= d["C"].max() * (1 - 1e-6)]
    top = top if len(top) else d
    return str(top.loc[top["loss"].idxmin(), "optimizer"])


def scaling_rows(done: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (N, D) cell for the scaling-law fits (one family, one optimizer, seeds
    averaged, the best lr per cell); (rows, notes on what was left out or combined)."""
    d = done.copy()
    notes = []
    keep = fam.reference_family(d)
    if keep is not None:  # laws of one family; the families are compared in their own section
        arch = fam.arch_series(d)
        notes.append(f"scaling-law fits use model family `{keep}` only ({int((arch == keep).sum())} "
                     f"of {len(d)} done runs; the families are compared in their own section)")
        d = d[arch == keep]
    ref = reference_optimizer(d)
    if ref is not None:
        counts = d["optimizer"].value_counts()
        notes.append(f"scaling-law fits use optimizer `{ref}` only (lowest loss at the largest "
                     f"compute; {int(counts[ref])} of {len(d)} done runs; the optimizers are compared "
                     "in their own section)")
        d = d[d["optimizer"] == ref]
    vary = [c for c in ("lr", "seed") if c in d and d[c].nunique() > 1]
    if not vary:
        return d, notes
    d["_Nk"] = d["N"].map(sig)
    d["_Dk"] = d["D"].map(sig)
    hp = ["lr"] if "lr" in vary else []
    cells = seed_cells(d, ["_Nk", "_Dk"] + hp, mean=("N", "D", "C"),
                       first=("compute_budget", "point_id"))
    if hp:
        cells = cells.loc[cells.groupby(["_Nk", "_Dk"])["loss"].idxmin()]
        notes.append("each (N, D) cell uses its best learning rate (seed-averaged loss)")
    elif "seed" in vary:
        notes.append("seeds are averaged within each (N, D) cell")
    cells = cells.drop(columns=["_Nk", "_Dk"]).reset_index(drop=True)
    cells["status"] = "done"
    return cells, notes


@dataclass
class FitRows:
    """``rows``: what the scaling-law fits read; ``done``: the done rows that are results
    (trunks out); ``table``: every row that is a result (trunks out, any status); ``trunks``:
    the trunk rows left out; ``roles``: point_id, role, trunk, branched_at_step of every row;
    ``notes``: what the family/optimizer/cell selection left out or combined, in words
    (:meth:`left_out` adds the trunks)."""

    rows: pd.DataFrame
    done: pd.DataFrame
    table: pd.DataFrame
    trunks: pd.DataFrame
    roles: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)  # analysis/validation.py

    def left_out(self) -> list[str]:
        """What the selection left out or combined, trunks first, in words."""
        n, v = len(self.trunks), len(self.validation)
        return ([f"{n} cooldown trunk run(s) left out ({TRUNK_NOTE})"] if n else []) + (
            [f"{v} validation run(s) left out ({VALIDATION_NOTE})"] if v else []) + list(self.notes)


def select_fit_rows(df: pd.DataFrame) -> FitRows:
    """The selection described in the module docstring. Adds the role columns to ``df`` in
    place (:func:`analysis.branches.annotate_roles`, reading point folders where
    ``df.attrs["folder"]`` is a sweep folder)."""
    annotate_roles(df, df.attrs.get("folder"))
    roles = df[[c for c in ("point_id", "role", "trunk", "branched_at_step") if c in df]].copy()
    trunks = df[is_trunk(df)]
    table, n_trunks = drop_trunks(df)
    table, validation = drop_validation(table)  # runs that test the fits are not fitted
    done = done_rows(table)
    rows, notes = scaling_rows(done) if len(done) else (done, [])
    rows.attrs = dict(table.attrs)
    if "compute_budget" in rows and np.isfinite(pd.to_numeric(rows["compute_budget"], errors="coerce")).any():
        rows.attrs["budget_col"] = "compute_budget"
    return FitRows(rows=rows, done=done, table=table, trunks=trunks, roles=roles, notes=notes,
                   validation=validation)
