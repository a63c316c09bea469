"""The lower-left Pareto front of (x, loss) rows: the lowest loss reached with at most x, the
points a power law of the loss in x is fitted to when the runs do not vary x alone
(the report's L(N), L(D), L(C); ``python -m analysis fit --law power --envelope``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.result import sig


def pareto_front(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the rows on the lower-left Pareto front: at each x the lowest loss, kept
    only if it is lower than every loss at smaller x ("the lowest loss reached with at most
    x")."""
    x = np.asarray(x, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    order = np.lexsort((loss, x))  # by x, then loss
    keep, best, last_x = [], math.inf, None
    for i in order:
        if last_x is not None and x[i] == last_x:
            continue  # only the lowest loss at each x
        last_x = x[i]
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=int)


def best_per_value(x: np.ndarray, loss: np.ndarray) -> pd.DataFrame:
    """The lowest loss at each distinct x (to 6 significant figures), sorted by x."""
    df = pd.DataFrame({"x": x, "loss": loss})
    df["k"] = df["x"].map(sig)
    out = df.loc[df.groupby("k")["loss"].idxmin(), ["x", "loss"]]
    return out.sort_values("x").reset_index(drop=True)
