"""Model families side by side: L(N) per architecture at fixed D, the n-gram reference, and
the loss at each position of the context window (Kaplan et al. 2020, Fig. 7).

Families. A results table's ``arch`` column names each run's family ("transformer",
"lstm", ...); a table without it (or a blank cell) is all "transformer". Per family, at
one D (the D with the most distinct N in that family; other D are left out and said so),
:func:`fit_families` fits Kaplan's L(N) = (N_c/N)^alpha_N (``irreducible=True``: E +
(N_c/N)^alpha_N, where the data identify E) with :func:`analysis.fits.powerlaw.fit_power_law`.
Its intervals come from the noise-aware bootstrap (analysis/noise.py): the design (the
sizes) fixed, each run's loss perturbed by its measured noise (seed spread, else its eval
stderr). N is the table's N under its accounting (analysis/load.py): all parameters
("total") or non-embedding parameters ("kaplan", as Kaplan et al. compare LSTMs and
transformers); the captions say which.

n-gram reference. ``python run_sweep.py ngram SPEC --order K`` writes
``<sweep>/ngram/order<K>/result.json`` (arch "ngram": an interpolated Kneser-Ney model
counted on the same training tokens, scored on the same eval windows and targets, in
nats per token, with its cluster-robust stderr). :func:`read_ngrams` reads every such
file of a sweep folder, or the folders/files given; an n-gram is drawn as a horizontal
line (its "N", the number of distinct n-grams it stores, is no parameter count).

Loss by position. Runs with ``train.eval_per_position = true`` record the final eval's
mean loss at each position t = 0..T-1 of the window (``eval_loss_by_position`` in each
point's result.json, kept out of the results table); :func:`read_positions` reads them
with plain JSON (the analysis never imports ``scaling``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.noise import loss_noise, noise_replicates, seed_cells
from analysis.fits.powerlaw import PowerLawFit, fit_power_law

ARCH_COL = "arch"
DEFAULT_ARCH = "transformer"
NGRAM_SUBDIR = "ngram"
MIN_SIZES = 3  # distinct N per family for (N_c/N)^alpha (4 with E)


def arch_series(df: pd.DataFrame) -> pd.Series:
    """Each row's family; absent column or blank cell: "transformer"."""
    if ARCH_COL not in df:
        return pd.Series(DEFAULT_ARCH, index=df.index, dtype=object)
    a = df[ARCH_COL].astype(object)
    blank = a.isna() | (a.astype(str).str.strip() == "")
    return a.where(~blank, DEFAULT_ARCH).astype(str)


def objective_of(rows: pd.DataFrame) -> str:
    """The training objective of a family's rows ("next_token" where not recorded)."""
    if "objective" not in rows or rows.empty:
        return "next_token"
    v = rows["objective"].dropna().astype(str)
    v = v[v != ""]
    return str(v.mode().iloc[0]) if len(v) else "next_token"


def n_families(df: pd.DataFrame) -> int:
    return int(arch_series(df).nunique()) if len(df) else 0


def reference_family(done: pd.DataFrame) -> str | None:
    """The family whose runs the single-family fits use when a table holds several: the
    transformer if present, else the most common; None with one family."""
    arch = arch_series(done)
    if arch.nunique() < 2:
        return None
    return DEFAULT_ARCH if (arch == DEFAULT_ARCH).any() else str(arch.value_counts().index[0])


def _sig(v: float, digits: int = 3) -> str:
    return f"{float(v):.{digits}g}"


def family_rows(done: pd.DataFrame, arch: str) -> tuple[pd.DataFrame, str]:
    """The done rows of family `arch` at its fixed D, and a note on what was left out.

    Several seeds of one (N, D) are averaged (their spread becomes the noise)."""
    d = done[arch_series(done) == arch]
    d = d[np.isfinite(d["loss"].astype(float)) & (d["loss"].astype(float) > 0)]
    if d.empty:
        return d, f"{arch}: no done runs"
    dk = d["D"].map(_sig)
    per_d = d.groupby(dk)["N"].apply(lambda s: s.map(_sig).nunique())
    best = per_d.idxmax()
    note = ""
    if len(per_d) > 1:
        note = (f"{arch}: fitted at D = {best} ({int(per_d[best])} sizes); "
                f"{int((dk != best).sum())} runs at other D left out")
    d = d[dk == best].copy()
    d["_Nk"] = d["N"].map(_sig)
    objective = objective_of(d)
    rows = (seed_cells(d, ["_Nk"]).drop(columns="_Nk").sort_values("N")
            .reset_index(drop=True))
    rows["arch"] = arch
    rows["objective"] = objective
    return rows, note


def fit_families(done: pd.DataFrame, *, irreducible: bool = False, n_boot: int = 200,
                 seed: int = 0) -> tuple[dict[str, PowerLawFit], dict[str, pd.DataFrame], list[str]]:
    """({family: L(N) fit}, {family: its rows}, notes) for every family with enough sizes.

    A family with fewer than 3 distinct N (4 with E) is not fitted; the notes say so."""
    fits, rows_by, notes = {}, {}, []
    need = MIN_SIZES + (1 if irreducible else 0)
    for arch in sorted(arch_series(done).unique(), key=lambda a: (a != DEFAULT_ARCH, a)):
        rows, note = family_rows(done, arch)
        if note:
            notes.append(note)
        if len(rows):
            rows_by[arch] = rows
        if len(rows) < need:
            notes.append(f"{arch}: {len(rows)} distinct N at fixed D (need {need}); not fitted")
            continue
        noise = loss_noise(rows)
        rng = np.random.default_rng(seed)
        boot_y = noise_replicates(rows["loss"], noise.sigma, n_boot, rng) if n_boot else None
        try:
            fit = fit_power_law(rows["N"], rows["loss"], irreducible=irreducible, n_boot=n_boot,
                                seed=seed, boot_y=boot_y, name="N")
        except ValueError as exc:
            notes.append(f"{arch}: {exc}")
            continue
        fit.info.update({"bootstrap": "noise (design fixed, each run's loss perturbed)",
                         "noise_source": noise.source, "family": arch,
                         "D": float(rows["D"].iloc[0])})
        fits[arch] = fit
    return fits, rows_by, notes


# ---------------------------------------------------------------------------- n-gram


def _ngram_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if (source / "result.json").exists():
        return [source / "result.json"]
    return sorted((source / NGRAM_SUBDIR).glob("*/result.json")) if (source / NGRAM_SUBDIR).is_dir() else []


def read_ngrams(*sources) -> pd.DataFrame:
    """One row per n-gram result (arch "ngram") found in the sweep folders, n-gram folders or
    result.json files given: order, eval_loss, eval_loss_stderr, eval_tokens, eval_documents,
    N (distinct n-grams), D, path, and the per-position losses where recorded."""
    rows = []
    for src in sources:
        if src is None:
            continue
        for f in _ngram_files(Path(src)):
            try:
                r = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(r, dict) or r.get("arch") != "ngram":
                continue
            rows.append({"order": r.get("order"), "eval_loss": r.get("eval_loss"),
                         "eval_loss_stderr": r.get("eval_loss_stderr"),
                         "eval_tokens": r.get("eval_tokens"), "eval_documents": r.get("eval_documents"),
                         "N": r.get("N"), "D": r.get("D"), "path": str(f),
                         "eval_loss_by_position": r.get("eval_loss_by_position"),
                         "corpus_fingerprint": r.get("corpus_fingerprint")})
    cols = ["order", "eval_loss", "eval_loss_stderr", "eval_tokens", "eval_documents", "N", "D",
            "path", "eval_loss_by_position", "corpus_fingerprint"]
    return pd.DataFrame(rows, columns=cols).sort_values("order").reset_index(drop=True)


# ---------------------------------------------------------------------------- positions


def read_positions(folder: str | Path | None, point_ids) -> dict[str, np.ndarray]:
    """{point id: mean loss at each window position} for the points whose result.json has
    ``eval_loss_by_position`` (train.eval_per_position = true)."""
    out: dict[str, np.ndarray] = {}
    if folder is None:
        return out
    pts = Path(folder) / "points"
    for pid in point_ids:
        try:
            r = json.loads((pts / str(pid) / "result.json").read_text())
        except (OSError, ValueError):
            continue
        v = r.get("eval_loss_by_position") if isinstance(r, dict) else None
        if isinstance(v, list) and v:
            out[str(pid)] = np.asarray(v, dtype=np.float64)
    return out


def pick_sizes(rows: pd.DataFrame, have: set, k: int = 4) -> pd.DataFrame:
    """Up to k rows spread over log N (smallest, largest and between) that have positions."""
    r = rows[rows["point_id"].astype(str).isin(have)].sort_values("N")
    if len(r) <= k:
        return r
    idx = np.unique(np.round(np.linspace(0, len(r) - 1, k)).astype(int))
    return r.iloc[idx]


# ---------------------------------------------------------------------------- table


def _ci(fit: PowerLawFit, key: str, digits: int = 3) -> str:
    v = fit.params[key]
    if key in fit.unidentified:
        b = fit.bounds.get(key)
        return f"{v:.{digits}g} (not identified" + (f"; {key} {b[0]} {b[1]:.{digits}g})" if b else ")")
    lo, hi = fit.interval(key)
    if math.isfinite(lo):
        return f"{v:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
    return f"{v:.{digits}g}"


def families_table(fits: dict, rows_by: dict, ngrams: pd.DataFrame) -> pd.DataFrame:
    """Exponent per family with its 95 % interval, and the n-gram losses with their stderr."""
    out = []
    for arch, rows in rows_by.items():
        fit = fits.get(arch)
        big = rows.iloc[-1]
        se = big.get("eval_loss_stderr", math.nan)
        out.append({
            "family": arch, "objective": objective_of(rows),
            "runs": int(rows["n_seeds"].sum()), "sizes": len(rows),
            "N range": f"{rows['N'].min():.3g}–{rows['N'].max():.3g}",
            "D": f"{rows['D'].iloc[0]:.3g}",
            "alpha_N [95% CI]": _ci(fit, "alpha") if fit else "not fitted",
            "N_c [95% CI]": _ci(fit, "x_c") if fit else "–",
            "E": _ci(fit, "E") if fit is not None and "E" in fit.params else "–",
            "loss at largest N": (f"{big['loss']:.4f} ± {se:.4f}" if np.isfinite(se)
                                  else f"{big['loss']:.4f}"),
        })
    for r in ngrams.itertuples():
        out.append({"family": f"{int(r.order)}-gram (Kneser-Ney)", "objective": "next_token",
                    "runs": 1, "sizes": 1,
                    "N range": f"{r.N:.3g} n-grams" if r.N is not None else "–",
                    "D": f"{r.D:.3g}" if r.D is not None else "–",
                    "alpha_N [95% CI]": "–", "N_c [95% CI]": "–", "E": "–",
                    "loss at largest N": f"{r.eval_loss:.4f} ± {r.eval_loss_stderr:.4f}"})
    return pd.DataFrame(out)
