"""The measurement noise of each run's loss, and parametric (noise-aware) bootstrap replicates.

Scaling-law designs (IsoFLOP grids, L(N, D) grids) fix the sizes and token counts by design:
they are not drawn from a population, so resampling runs with replacement (the case
bootstrap) answers the wrong question and, for IsoFLOP grids, often leaves a budget with too
few distinct sizes. The noise-aware bootstrap keeps the design fixed and perturbs each run's
loss by its noise, then refits.

The noise model (:func:`noise_model`, used by the report and ``python -m analysis fit``) has
two parts, because a run's loss is off for two different reasons:

1. the EVAL SET (shared). Every run of a sweep is scored on the same eval windows (the same
   ``eval_set_id``), so an eval set that happens to hold easy documents lowers every run's
   loss together: in argmins and slopes this error largely cancels, and treating it as
   independent per run (as ``eval_loss_stderr`` alone would) overstates it. Where each
   run's result.json has ``eval_by_document`` (per validation document: its stable index,
   scored tokens and loss sum), each bootstrap replicate draws ONE set of document weights
   (the documents resampled with replacement, a multinomial draw) and applies it jointly to
   every run of that eval set: the run's replicate loss is
   ``sum_d w_d loss_sum_d / sum_d w_d tokens_d``, used as a relative perturbation of its
   loss. Runs on different eval sets get independent draws. Resampling documents covers
   the draw of the eval windows and, conservatively, the choice of the held-out documents.
2. TRAINING: initialisation and data order, i.e. the seed. Where some
   (N, D) cells were run with several seeds, the pooled relative standard deviation of one
   run, sqrt(sum_c sum_s (L_cs / mean_c - 1)^2 / sum_c (n_c - 1)), divided by sqrt(number
   of seeds averaged in the cell). With a fixed eval set (the same ``eval_set_id`` for every
   seed) the seed spread does NOT contain the eval-set noise: the seeds were scored on the
   same windows, which is why part 1 is added to it. Where no cell has repeated seeds the
   training noise is not measured: a relative seed noise measured elsewhere is used only
   when the user passes it (``seed_noise``, ``--seed-noise REL``), and otherwise the
   intervals leave it out and the sentence of :attr:`LossNoise.sentence` says so.
   This noise is NOT independent between runs of one TRAJECTORY: runs of the same size and
   seed start from the same initialisation and read the same data in the same order, and
   a trunk's cooldown branches share every step before their branch point. A lucky seed
   lowers all of them together. Measured on 8 replicate demo sweeps
   (benchmarks/calibration.py): the deviations of two runs of one size from their means
   over the sweeps correlate at 0.77 (0.52 after removing each sweep's common shift, the
   eval-window draw), two runs of different sizes at 0.39 (-0.13). Each replicate
   therefore draws one factor per trajectory (``seed_corr`` of the seed variance, default
   1: conservatively all of it) shared by its runs, and the rest (1 - ``seed_corr``)
   independently per run; a cell averaged over k seeds takes the mean
   of its k trajectories' factors. Trajectories are keyed by N (and lr where it varies)
   and the seed (a ``seed`` column, or the ``seeds`` of a seed-averaged cell); rows
   without a seed are their own trajectory.

Without per-document losses (a plain results CSV) the model falls back to
:func:`loss_noise` (the older rule: seed spread where measured, else each run's
``eval_loss_stderr`` taken as independent, else an assumed relative noise), and its source
says so.

:func:`loss_noise` (used where no sweep folder is at hand: model families, lr laws), in
order of preference: (1) the seed-to-seed spread, median over cells with several seeds of
std / mean, divided by sqrt(seeds averaged); with a fixed eval set it holds the training
noise only, not the eval-set noise; (2) ``eval_loss_stderr`` (divided by sqrt(seeds)); (3)
an assumed relative noise, stated (:data:`DEFAULT_REL_NOISE`, or a fit's own residual scale
where the fit says so).

Replicates are log-normal, ``log L_b = log L + (sigma / L) z + g_b`` with z ~ N(0, 1) (the
independent part) and g_b the shared factors (eval set, trajectories; 0 without them): the
same relative noise, and a loss that stays positive.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# the eval-set target of the measurement issue: stderr <= 0.5 % of the loss
DEFAULT_REL_NOISE = 0.005


@dataclass
class EvalDocuments:
    """Per-document eval losses of each row of a table (the shared eval-set component).

    ``set_of``: per row, the index into ``sets`` of its eval set, -1 for a row without
    per-document losses; ``tokens`` / ``loss_sum``: per row, (n_docs of its set,) arrays
    aligned with that set's document list (zeros for documents the row did not score);
    ``sets``: the eval_set_id of each set; ``n_docs``: documents per set."""

    set_of: np.ndarray
    tokens: list
    loss_sum: list
    sets: list[str]
    n_docs: list[int]

    @property
    def n_rows_with(self) -> int:
        return int(np.sum(self.set_of >= 0))

    def take(self, idx) -> "EvalDocuments":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return EvalDocuments(self.set_of[idx], [self.tokens[i] for i in idx],
                             [self.loss_sum[i] for i in idx], self.sets, self.n_docs)

    def log_factors(self, n_boot: int, seed: int = 0) -> np.ndarray:
        """(n_boot, n_rows): log(L_b / L) of each row under one document resampling per
        replicate and eval set, the same weights for every row of that set (module doc);
        0 for rows without documents."""
        out = np.zeros((int(n_boot), self.set_of.size))
        if n_boot <= 0:
            return out
        rng = np.random.default_rng([int(seed), 0x5EED])  # its own stream, not the fit's
        for g, n_docs in enumerate(self.n_docs):
            rows = np.flatnonzero(self.set_of == g)
            if rows.size == 0 or n_docs == 0:
                continue
            # multinomial(n_docs, uniform) counts per replicate, as counts of uniform draws
            pick = rng.integers(0, n_docs, size=(int(n_boot), n_docs))
            flat = (np.arange(int(n_boot))[:, None] * n_docs + pick).ravel()
            W = np.bincount(flat, minlength=int(n_boot) * n_docs).reshape(int(n_boot), n_docs).astype(np.float64)
            T = np.stack([self.tokens[i] for i in rows], axis=1)  # (n_docs, rows)
            S = np.stack([self.loss_sum[i] for i in rows], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                full = S.sum(axis=0) / T.sum(axis=0)
                rep = (W @ S) / (W @ T)
                f = np.log(rep / full[None, :])
            out[:, rows] = np.where(np.isfinite(f), f, 0.0)
        return out


@dataclass
class LossNoise:
    """``sigma``: absolute standard error of each row's loss from its independent part;
    ``source``: where it came from, in words, for captions (e.g. "seed spread (3 seeds,
    0.41 %)"); ``shared``: the eval-set component drawn jointly for all rows (None: no
    per-document losses, the eval noise is in ``sigma`` or absent); ``sentence``: the noise
    model in one sentence, for the report."""

    sigma: np.ndarray
    source: str
    shared: EvalDocuments | None = None
    sentence: str = ""
    info: dict = field(default_factory=dict)
    # the seed noise shared within trajectories: (rows, trajectories) weights and the
    # relative sd each row takes from them (sqrt(seed_corr) x the seed noise); None: none
    trajectories: np.ndarray | None = None
    trajectory_rel: float = 0.0

    @property
    def relative_median(self) -> float:
        return float("nan") if self.sigma.size == 0 else float(np.nanmedian(self.sigma))

    def short(self) -> str:
        return self.source

    def take(self, idx) -> "LossNoise":
        """The noise of a subset of the rows (positions or a boolean mask)."""
        idx = np.asarray(idx)
        return LossNoise(sigma=np.asarray(self.sigma)[idx], source=self.source,
                         shared=None if self.shared is None else self.shared.take(idx),
                         sentence=self.sentence, info=dict(self.info),
                         trajectories=None if self.trajectories is None else self.trajectories[idx],
                         trajectory_rel=self.trajectory_rel)

    def trajectory_factors(self, n_boot: int, seed: int = 0) -> np.ndarray | None:
        """(n_boot, rows) log factors of the seed noise shared within trajectories (one
        N(0, 1) draw per trajectory and replicate, its own random stream); None without."""
        T = self.trajectories
        if T is None or n_boot <= 0 or self.trajectory_rel <= 0:
            return None
        u = np.random.default_rng([int(seed), 0x7A1]).standard_normal((int(n_boot), T.shape[1]))
        return self.trajectory_rel * (u @ T.T)


def shared_factors(noise, keep, n_boot: int, seed: int = 0) -> np.ndarray | None:
    """(n_boot, rows kept) shared eval-set log factors of ``noise`` for the rows ``keep``
    (a mask or positions over the rows ``noise`` describes), or None when ``noise`` has no
    shared part (an array of sigmas, None, or a LossNoise without per-document losses).
    The fits add them to their noise replicates (:func:`noise_replicates`, ``shared=``)."""
    if not isinstance(noise, LossNoise) or n_boot <= 0:
        return None
    parts = [g for g in (None if noise.shared is None else noise.shared.log_factors(n_boot, seed),
                         noise.trajectory_factors(n_boot, seed)) if g is not None]
    if not parts:
        return None
    g = sum(parts)
    return g if keep is None else g[:, np.asarray(keep)]


def trajectory_sd(noise, keep) -> np.ndarray | float:
    """Each kept row's relative sd from the trajectory part alone (0 without one): the
    marginal that deterministic weights add to the independent sigma."""
    if not isinstance(noise, LossNoise) or noise.trajectories is None:
        return 0.0
    T = noise.trajectories if keep is None else noise.trajectories[np.asarray(keep)]
    return noise.trajectory_rel * np.sqrt((T ** 2).sum(axis=1))


def trajectories(rows: pd.DataFrame) -> np.ndarray | None:
    """(rows, trajectories) weights: row i's seed noise is the mean of the factors of the
    trajectories it averages (module docstring, part 2); None when no row names its seed."""
    if "seeds" in rows:
        seeds = [() if not isinstance(v, str) or not v else tuple(v.split(",")) for v in rows["seeds"]]
    elif "seed" in rows:
        seeds = [() if pd.isna(v) else (f"{float(v):g}",) for v in rows["seed"]]
    else:
        return None
    if not any(seeds):
        return None
    N = pd.to_numeric(rows["N"], errors="coerce").to_numpy(float) if "N" in rows else np.full(len(rows), np.nan)
    lr = (pd.to_numeric(rows["lr"], errors="coerce").to_numpy(float)
          if "lr" in rows and rows["lr"].nunique() > 1 else np.zeros(len(rows)))
    keys: dict = {}
    cols = []
    for i, ss in enumerate(seeds):
        if not ss or not np.isfinite(N[i]):
            cols.append([(("row", i), 1.0)])  # its own trajectory
            continue
        cols.append([((f"{N[i]:.6g}", f"{lr[i]:.6g}", s), 1.0 / len(ss)) for s in ss])
    for c in cols:
        for k, _ in c:
            keys.setdefault(k, len(keys))
    T = np.zeros((len(rows), len(keys)))
    for i, c in enumerate(cols):
        for k, w in c:
            T[i, keys[k]] += w
    return T


def assumed_noise(loss, rel: float = DEFAULT_REL_NOISE, why: str = "no eval_loss_stderr, no seeds") -> LossNoise:
    L = np.asarray(loss, dtype=np.float64)
    src = f"assumed {rel * 100:.2g} % relative noise ({why})"
    return LossNoise(sigma=rel * L, source=src,
                     sentence=f"Intervals: noise bootstrap with an {src}, independent per run.")


def loss_noise(rows: pd.DataFrame, *, loss_col: str = "loss", default_rel: float = DEFAULT_REL_NOISE) -> LossNoise:
    """Per-row noise of ``rows[loss_col]`` by the older rule (see the module docstring),
    every part independent per run.

    ``rows`` may carry ``n_seeds`` and ``seed_std`` (cells averaged over seeds, from
    :func:`analysis.report.build.scaling_rows`) and ``eval_loss_stderr``."""
    L = pd.to_numeric(rows[loss_col], errors="coerce").to_numpy(float)
    n_seeds = rows["n_seeds"].to_numpy(float) if "n_seeds" in rows else np.ones(L.size)
    n_seeds = np.where(np.isfinite(n_seeds) & (n_seeds >= 1), n_seeds, 1.0)
    if "seed_std" in rows:
        sd = rows["seed_std"].to_numpy(float)
        multi = (n_seeds >= 2) & np.isfinite(sd) & (sd >= 0) & (L > 0)
        if multi.any():
            rel = float(np.median(sd[multi] / L[multi]))
            if rel > 0:
                src = f"seed spread ({int(multi.sum())} cells with 2+ seeds; {rel * 100:.2g} % per run)"
                return LossNoise(sigma=rel * L / np.sqrt(n_seeds), source=src,
                                 sentence=f"Intervals: noise bootstrap with an independent {src}.")
    if "eval_loss_stderr" in rows:
        se = pd.to_numeric(rows["eval_loss_stderr"], errors="coerce").to_numpy(float)
        good = np.isfinite(se) & (se > 0)
        if good.all() and good.size:
            rel = float(np.median(se / L))
            src = f"eval_loss_stderr (median {rel * 100:.2g} % of the loss)"
            return LossNoise(sigma=se / np.sqrt(n_seeds), source=src,
                             sentence=f"Intervals: noise bootstrap with each run's {src} as "
                                      "independent noise.")
        if good.any():
            rel = float(np.median(se[good] / L[good]))
            sig = np.where(good, se, rel * L) / np.sqrt(n_seeds)
            src = (f"eval_loss_stderr ({int(good.sum())} of {good.size} rows; the others at its "
                   f"median, {rel * 100:.2g} %)")
            return LossNoise(sigma=sig, source=src,
                             sentence=f"Intervals: noise bootstrap with each run's {src} as "
                                      "independent noise.")
    return assumed_noise(L, default_rel)


# ---------------------------------------------------------------------------- the two parts


def read_documents(folder, point_ids) -> dict[str, dict]:
    """{point id: {"set": eval_set_id, "doc", "tokens", "loss_sum"}} for the points of the
    sweep folder whose result.json has ``eval_by_document`` (as families.read_positions
    reads per-position losses)."""
    out: dict[str, dict] = {}
    if folder is None:
        return out
    pts = Path(folder) / "points"
    for pid in point_ids:
        if pid is None or (isinstance(pid, float) and math.isnan(pid)):
            continue
        try:
            r = json.loads((pts / str(pid) / "result.json").read_text())
        except (OSError, ValueError):
            continue
        bd = r.get("eval_by_document") if isinstance(r, dict) else None
        if not isinstance(bd, dict) or not all(k in bd for k in ("doc", "tokens", "loss_sum")):
            continue
        doc = np.asarray(bd["doc"], dtype=np.int64)
        tok = np.asarray(bd["tokens"], dtype=np.float64)
        ls = np.asarray(bd["loss_sum"], dtype=np.float64)
        if doc.size == 0 or not (doc.size == tok.size == ls.size):
            continue
        out[str(pid)] = {"set": str(r.get("eval_set_id") or "unnamed"), "doc": doc, "tokens": tok,
                         "loss_sum": ls}
    return out


def eval_documents(point_ids, docs: dict[str, dict]) -> EvalDocuments | None:
    """The per-document losses of each row (by its point id) aligned per eval set; None when
    no row has them."""
    ids = [None if p is None else str(p) for p in point_ids]
    have = [p for p in ids if p in docs]
    if not have:
        return None
    sets = sorted({docs[p]["set"] for p in have})
    index = {}
    for s in sets:
        index[s] = np.unique(np.concatenate([docs[p]["doc"] for p in have if docs[p]["set"] == s]))
    set_of = np.full(len(ids), -1, dtype=np.int64)
    tokens, loss_sum = [], []
    for i, p in enumerate(ids):
        if p not in docs:
            tokens.append(None)
            loss_sum.append(None)
            continue
        d = docs[p]
        g = sets.index(d["set"])
        pos = np.searchsorted(index[d["set"]], d["doc"])
        t = np.zeros(index[d["set"]].size)
        s = np.zeros(index[d["set"]].size)
        np.add.at(t, pos, d["tokens"])
        np.add.at(s, pos, d["loss_sum"])
        set_of[i] = g
        tokens.append(t)
        loss_sum.append(s)
    return EvalDocuments(set_of, tokens, loss_sum, sets, [int(index[s].size) for s in sets])


def pooled_seed_noise(rows: pd.DataFrame, *, loss_col: str = "loss",
                      cell_keys: tuple[str, ...] = ("N", "D")) -> dict | None:
    """The pooled relative seed sd of one run (module docstring), or None where no cell has
    repeated seeds: {"rel", "cells", "seeds" (per cell with repeats), "dof"}.

    Reads either cell rows (``n_seeds``, ``seed_std``: seeds already averaged) or one row
    per run with a ``seed`` column (runs grouped by ``cell_keys``, and ``lr`` where it
    varies)."""
    L = pd.to_numeric(rows[loss_col], errors="coerce").to_numpy(float)
    if "n_seeds" in rows and "seed_std" in rows:
        n = pd.to_numeric(rows["n_seeds"], errors="coerce").to_numpy(float)
        sd = pd.to_numeric(rows["seed_std"], errors="coerce").to_numpy(float)
        m = np.isfinite(n) & (n >= 2) & np.isfinite(sd) & (L > 0)
        if not m.any():
            return None
        ss = float(np.sum((n[m] - 1) * (sd[m] / L[m]) ** 2))
        dof = float(np.sum(n[m] - 1))
        return {"rel": math.sqrt(ss / dof), "cells": int(m.sum()), "seeds": n[m].astype(int).tolist(),
                "dof": int(dof)}
    if "seed" not in rows or rows["seed"].nunique() < 2:
        return None
    keys = [k for k in cell_keys if k in rows]
    if "lr" in rows and rows["lr"].nunique() > 1:
        keys.append("lr")
    if not keys:
        return None
    d = pd.DataFrame({k: pd.to_numeric(rows[k], errors="coerce").map(lambda v: float(f"{v:.6g}"))
                      for k in keys})
    d["L"] = L
    d = d[np.isfinite(d["L"]) & (d["L"] > 0)]
    g = d.groupby(keys)["L"]
    n = g.transform("size").to_numpy(float)
    mean = g.transform("mean").to_numpy(float)
    multi = n >= 2
    if not multi.any():
        return None
    ss = float(np.sum((d["L"].to_numpy(float)[multi] / mean[multi] - 1.0) ** 2))
    sizes = g.size()
    dof = float(np.sum(sizes[sizes >= 2] - 1))
    return {"rel": math.sqrt(ss / dof), "cells": int((sizes >= 2).sum()),
            "seeds": sizes[sizes >= 2].astype(int).tolist(), "dof": int(dof)}


def _seeds_text(s: dict) -> str:
    counts = sorted(set(s["seeds"]))
    per = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"pooled over {s['cells']} cell{'s' if s['cells'] != 1 else ''} with {per} seeds, {s['dof']} dof"


def noise_model(rows: pd.DataFrame, folder=None, *, seed_noise: float | None = None,
                seed_corr: float = 1.0, loss_col: str = "loss",
                default_rel: float = DEFAULT_REL_NOISE) -> LossNoise:
    """The two-part noise model of ``rows`` (module docstring): a shared eval-set component
    from the per-document losses in ``folder``/points/<point_id>/result.json and an
    independent seed component (pooled seed spread of ``rows``; else ``seed_noise``, a
    relative sd measured elsewhere, given by the user; else none, and said so).

    ``seed_corr``: the fraction of the seed variance shared by the runs of one trajectory
    (module docstring, part 2; 0: independent per run).

    Without per-document losses: :func:`loss_noise`, with ``seed_noise`` (when given and the
    rows measure no seed spread) added in quadrature, and the source says so."""
    if seed_noise is not None and not (0 <= float(seed_noise) < 1):
        raise ValueError(f"seed_noise = {seed_noise}: a relative sd in [0, 1) (e.g. 0.003 for 0.3 %)")
    if not (0 <= float(seed_corr) <= 1):
        raise ValueError(f"seed_corr = {seed_corr}: a fraction of the seed variance in [0, 1]")
    L = pd.to_numeric(rows[loss_col], errors="coerce").to_numpy(float)
    n_seeds = (pd.to_numeric(rows["n_seeds"], errors="coerce").to_numpy(float)
               if "n_seeds" in rows else np.ones(L.size))
    n_seeds = np.where(np.isfinite(n_seeds) & (n_seeds >= 1), n_seeds, 1.0)
    ids = rows["point_id"].tolist() if "point_id" in rows else []
    docs = eval_documents(ids, read_documents(folder, ids)) if ids else None
    seeds = pooled_seed_noise(rows, loss_col=loss_col)
    if docs is None:
        base = loss_noise(rows, loss_col=loss_col, default_rel=default_rel)
        why = "no per-document eval losses (eval_by_document), so the eval noise is taken as independent per run"
        if seeds is None and seed_noise is not None:
            sig = np.sqrt(base.sigma ** 2 + (float(seed_noise) * L) ** 2 / n_seeds)
            src = f"{base.source} + a given seed noise of {seed_noise * 100:.2g} % (--seed-noise)"
            return LossNoise(sigma=sig, source=src,
                             sentence=f"Intervals: noise bootstrap with independent noise per run, "
                                      f"{src}; {why}.", info={"seed_noise_given": float(seed_noise)})
        base.sentence = base.sentence.rstrip(".") + f" ({why})."
        base.source = base.source + " (independent; no eval_by_document)"
        return base
    n_doc_rows = docs.n_rows_with
    missing = ~(docs.set_of >= 0)
    info = {"eval_sets": len(docs.sets), "documents": docs.n_docs, "rows_with_documents": n_doc_rows}
    if seeds is not None:
        rel = seeds["rel"]
        seed_part = f"a seed noise of {rel * 100:.2g} % per run ({_seeds_text(seeds)})"
        info["seed_noise"] = {**seeds, "from": "seeds"}
    elif seed_noise is not None:
        rel = float(seed_noise)
        seed_part = (f"a seed noise of {rel * 100:.2g} % per run, given by the user "
                     "(--seed-noise; this sweep has no repeated seeds)")
        info["seed_noise"] = {"rel": rel, "from": "given"}
    else:
        rel = 0.0
        seed_part = ("no seed noise: this sweep has no repeated seeds and none was given "
                     "(--seed-noise REL), so the intervals leave out the training noise "
                     "(initialisation, data order) and are too narrow by that much")
        info["seed_noise"] = {"rel": None, "from": "none"}
    T = trajectories(rows) if rel > 0 and seed_corr > 0 else None
    if T is not None:
        n_traj, shared_rows = T.shape[1], int(np.sum((T > 0).sum(axis=0) >= 2))
        seed_part += (f", {seed_corr * 100:.0f} % of its variance shared by the runs of one "
                      f"trajectory (same size and seed: {n_traj} trajectories, {shared_rows} "
                      "with several runs; --seed-corr)")
        info["seed_noise"]["corr"] = float(seed_corr)
        info["seed_noise"]["trajectories"] = int(n_traj)
    elif rel > 0:
        seed_part += ", independent per run"
    indep = rel * (math.sqrt(1.0 - seed_corr) if T is not None else 1.0)
    sigma = indep * L / np.sqrt(n_seeds)
    extra = ""
    if missing.any():  # rows without documents: their eval stderr, independent
        se = (pd.to_numeric(rows["eval_loss_stderr"], errors="coerce").to_numpy(float)
              if "eval_loss_stderr" in rows else np.full(L.size, np.nan))
        se = np.where(np.isfinite(se) & (se > 0), se, default_rel * L)
        sigma = np.where(missing, np.sqrt(sigma ** 2 + se ** 2 / n_seeds), sigma)
        extra = (f"; {int(missing.sum())} of {L.size} runs without per-document losses take their "
                 "eval_loss_stderr as independent noise")
    ndoc = docs.n_docs[0] if len(docs.n_docs) == 1 else f"{min(docs.n_docs)}-{max(docs.n_docs)}"
    shared_part = (f"the eval-set noise shared across runs (documents resampled jointly, {ndoc} "
                   f"documents" + (f", {len(docs.sets)} eval sets drawn independently" if len(docs.sets) > 1 else "")
                   + ")")
    sentence = f"Intervals: noise bootstrap with {shared_part} and {seed_part}{extra}."
    how = info["seed_noise"]["from"]
    seed_src = {"seeds": f"seed {rel * 100:.2g} % ({seeds['cells'] if seeds else 0} cells)",
                "given": f"seed {rel * 100:.2g} % (given)", "none": "no seed noise"}[how]
    if T is not None:
        seed_src += f", {seed_corr * 100:.0f} % shared per trajectory"
    src = f"eval documents shared ({ndoc}) + {seed_src}"
    return LossNoise(sigma=sigma, source=src, shared=docs, sentence=sentence, info=info,
                     trajectories=T, trajectory_rel=rel * math.sqrt(seed_corr) if T is not None else 0.0)


def seed_cells(rows: pd.DataFrame, keys: list[str], *, mean: tuple[str, ...] = ("N", "D"),
               first: tuple[str, ...] = ("point_id",)) -> pd.DataFrame:
    """One row per group of `keys` (the runs of one cell: its seeds): the mean loss, the
    mean of each column in `mean`, `n_seeds` and `seed_std` (what :func:`loss_noise` reads),
    the mean `eval_loss_stderr`, and the first value of each column in `first`; the keys
    become columns. Columns that `rows` lacks are left out."""
    agg = {"loss": ("loss", "mean")}
    agg.update({c: (c, "mean") for c in mean if c in rows})
    agg.update(n_seeds=("loss", "size"), seed_std=("loss", "std"))
    if "seed" in rows:  # which seeds: the cell's trajectories (noise_model)
        agg["seeds"] = ("seed", lambda v: ",".join(f"{float(x):g}" for x in sorted(v.dropna())))
    if "eval_loss_stderr" in rows:
        rows = rows.assign(eval_loss_stderr=pd.to_numeric(rows["eval_loss_stderr"], errors="coerce"))
        agg["eval_loss_stderr"] = ("eval_loss_stderr", "mean")
    agg.update({c: (c, "first") for c in first if c in rows})
    return rows.groupby(keys, dropna=False).agg(**agg).reset_index()


def noise_replicates(loss, sigma, n_boot: int, rng: np.random.Generator, *, shared=None) -> np.ndarray:
    """(n_boot, n) losses: log L + (sigma / L) z + g, z ~ N(0, 1) independent per run and
    replicate, g the shared eval-set log factors ((n_boot, n), :func:`shared_factors`; 0 when
    None)."""
    L = np.asarray(loss, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64) / L
    z = rng.standard_normal((n_boot, L.size))
    out = L[None, :] * np.exp(s[None, :] * z)
    return out if shared is None else out * np.exp(np.asarray(shared, dtype=np.float64))
