"""Scaling-law analysis: fits with honest intervals, figures, tables and reports.

Works on any results table (a sweep folder of this project or any CSV) with numpy, scipy,
pandas, matplotlib and seaborn only; no GPU, no jax.

    from analysis import load_results, fit_approach3, analyze
    df = load_results("runs.csv", n_col="Model Size", c_col="Training FLOP", loss_col="loss")
    fit = fit_approach3(df["N"], df["D"], df["loss"])       # Chinchilla Approach 3
    print(fit.describe()); fit.optimal_table([1e21, 1e22])   # N_opt, D_opt, loss with CIs
    analyze("sweeps/my_sweep")                                # report folder

Command line: ``python -m analysis fit --law {power,frontier,chinchilla,isoflop,kaplan} ...``
, ``python -m analysis analyze <sweep folder or CSV>`` and ``python -m analysis lr-law
<sweep or table>`` (a fitted lr*(N) law as a spec's ``lr_law`` line), ``python -m analysis batch
<sweep>`` (the critical batch size, B in tokens: analysis/batch.py, analysis/cli_batch.py).

Public API (imported lazily, so ``import analysis`` stays cheap):

- loading: ``load_results`` (with ``accounting=``), ``load_curves``, ``done``,
  ``rebuild_from_points``; noise: ``loss_noise``, ``LossNoise``
- fits: ``fit_power_law``, ``fit_frontier``, ``fit_approach1``, ``fit_isoflop``,
  ``fit_approach3``, ``fit_kaplan``, ``compute_optimal``
- optimizers: ``lr_sensitivity``, ``best_lr``, ``lr_scaling``, ``compute_laws``,
  ``compute_multiplier``, ``fit_lr_law``
- cooldown branches: ``annotate_roles``, ``drop_trunks``, ``compute_spent`` (trunks are not
  results; FLOPs spent by trunks + cooldowns vs separate runs)
- report: ``analyze``; synthetic fixtures: ``make_scaling_sweep``, ``make_optimizer_sweep``
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_results": "load", "load_curves": "load", "done": "load",
    "fit_power_law": "fits.powerlaw", "PowerLawFit": "fits.powerlaw",
    "fit_frontier": "fits.frontier", "fit_approach1": "fits.frontier",
    "fit_isoflop": "fits.isoflop", "group_budgets": "fits.isoflop",
    "fit_approach3": "fits.chinchilla", "fit_kaplan": "fits.chinchilla", "hoffmann_starts": "fits.chinchilla",
    "ChinchillaFit": "fits.chinchilla",
    "compute_optimal": "fits.predict",
    "lr_sensitivity": "optimizers", "best_lr": "optimizers", "lr_scaling": "optimizers",
    "compute_laws": "optimizers", "compute_multiplier": "optimizers",
    "EdgeOfGridWarning": "optimizers", "fit_lr_law": "lrlaw",
    "annotate_roles": "branches", "drop_trunks": "branches", "compute_spent": "branches",
    "analyze": "report.build",
    "make_scaling_sweep": "synthetic", "make_optimizer_sweep": "synthetic",
    "FitResult": "result",
    "loss_noise": "noise", "LossNoise": "noise", "rebuild_from_points": "load",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__():
    return __all__
