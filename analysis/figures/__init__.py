"""Figures, in one paper style.

    style.py        seaborn "paper" context, colour-blind-safe palettes, saving (PDF + PNG)
    axes.py         what the figures share: log axes with readable ticks, labels, colour bars
    fits.py         the scaling-law figures (curves and frontier, L(N), L(D), L(C), IsoFLOP,
                    allocation, residuals)
    optimizers.py   the optimizer comparison's figures
    families.py     the model-family figures
    batch.py        steps against tokens to each target; B_crit against the loss
"""
