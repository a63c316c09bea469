"""The report's model-family section: L(N) per model family with the n-gram reference line,
and the loss by token position (analysis/families.py). Called once from analysis/report/build.py
(:func:`section`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis import families as fam
from analysis.figures import axes as plot_axes
from analysis.figures import families as plots_families
from analysis.report.writer import Report
from analysis.result import fmt
from analysis.report.tables import to_markdown, value_ci


def section(rep: Report, df: pd.DataFrame, done: pd.DataFrame, source: Path, ngram,
                      *, n_boot: int, seed: int) -> None:
    """L(N) per model family with the n-gram line, and loss by token position
    (analysis/families.py); only where the table has several families, an n-gram result or
    per-position losses."""
    folder = df.attrs.get("folder")
    if folder is None and source.is_file() and (source.parent / "points").is_dir():
        folder = str(source.parent)  # a results table inside its sweep folder
    extra = [ngram] if isinstance(ngram, (str, Path)) else list(ngram or [])
    ngrams = fam.read_ngrams(*(extra or [folder]))
    ids = done["point_id"].astype(str).tolist() if "point_id" in done else []
    positions = fam.read_positions(folder, ids)
    n_fam = fam.n_families(done)
    if n_fam < 2 and ngrams.empty and not positions:
        rep.skip("model families", "one model family, no n-gram result, no per-position losses")
        return
    n_label = plot_axes.n_axis_label(df)
    n_words = n_label[n_label.index("(") + 1:-1] if "(" in n_label else "parameters"
    fits, rows_by, notes = fam.fit_families(done, n_boot=n_boot, seed=seed)
    lines = [f"- {n}" for n in notes]
    fp = set(ngrams["corpus_fingerprint"].dropna()) if len(ngrams) else set()
    run_fp = set(done["corpus_fingerprint"].dropna().astype(str)) if "corpus_fingerprint" in done else set()
    if fp and run_fp and not fp <= run_fp:
        rep.warnings.append("an n-gram result was computed on another corpus than the runs")
        lines.append("- WARNING: an n-gram result's corpus fingerprint differs from the runs'")
    for arch, fit in fits.items():
        rep.add_params(f"L(N) {arch}", fit, ["alpha", "x_c"])
        rep.findings.append(
            f"L(N) of the {arch} family at D = {fmt(fit.info['D'], 3)}: (N_c/N)^α_N with α_N = "
            f"{value_ci(fit['alpha'], *fit.interval('alpha'), 3)} ({fit.n} sizes; N = {n_words}; "
            f"noise bootstrap, {fit.n_boot_failed} of {len(fit.samples)} replicates failed).")
    for r in ngrams.itertuples():
        rep.findings.append(
            f"{int(r.order)}-gram Kneser-Ney on the same training tokens (D = {fmt(r.D, 3)}) and "
            f"eval windows: {r.eval_loss:.4f} ± {r.eval_loss_stderr:.4f} nats/token "
            f"({fmt(r.eval_tokens, 3)} tokens in {r.eval_documents} documents; stderr "
            "cluster-robust by document).")
    # one figure compares next-token losses; a masked-LM family (the encoder's loss is on
    # masked positions, another task) is in the table but not drawn against them
    drawn = {a: r for a, r in rows_by.items() if fam.objective_of(r) == "next_token"}
    for a in rows_by:
        if a not in drawn:
            lines.append(f"- {a}: trained on the {fam.objective_of(rows_by[a])} objective, whose loss "
                         "is not comparable with next-token loss: in the table, not in the figures")
    if rows_by or len(ngrams):
        rep.table(fam.families_table(fits, rows_by, ngrams), "families", rep.cap(
            "Model families: L(N) = (N_c/N)^α_N per family at fixed D (95% noise-bootstrap "
            f"intervals; N = {n_words}), the loss of each family's largest run ± its eval stderr, "
            "and the Kneser-Ney n-gram loss ± its cluster-robust stderr on the same eval windows",
            list(fits.values())), digits=4)
        rep.figure("families", rep.cap(
            f"Eval loss against N ({n_words}) per model family at fixed D: runs (± eval stderr), "
            "the fitted (N_c/N)^α_N with its 95% band; horizontal: Kneser-Ney n-gram loss on the "
            "same tokens and eval windows (± stderr)", list(fits.values())),
            lambda: plots_families.families_loss_vs_n(drawn, fits, ngrams, n_label))
    if positions:
        series = []
        for arch, rows in drawn.items():
            for r in fam.pick_sizes(rows, set(positions)).itertuples():
                series.append((arch, float(r.N), positions[str(r.point_id)]))
        lines.append(f"- per-position losses: {len(positions)} runs record them; drawn: "
                     f"{len(series)} (up to 4 sizes per family)")
        rep.figure("loss_by_position", rep.cap(
            "Mean eval loss at each token position of the context window (log x), for several N "
            f"per family (colour: N, {n_words}; line style: family); dotted black: the "
            "Kneser-Ney n-gram scored on the same windows from the same in-window context"),
            lambda: plots_families.loss_by_position(series, ngrams, n_label))
    elif n_fam >= 2:
        rep.skip("loss by position", "no run records per-position losses "
                 "(train.eval_per_position = true)")
    rep.fits["families"] = {"ngram": json.loads(ngrams.drop(columns=["eval_loss_by_position"])
                                                .to_json(orient="records")),
                            "notes": notes}
    rep.sections.append("## Model families\n\n" + (("\n".join(lines) + "\n\n") if lines else "")
                        + (to_markdown(fam.families_table(fits, rows_by, ngrams)) + "\n"
                           if rows_by or len(ngrams) else ""))
