"""Compute accounting: what a run costs and how fast it goes.

    counts.py      parameter counts, FLOPs per token, device peak FLOP/s and MFU
    xla_count.py   XLA's own FLOP count of a step program, every loop trip counted
"""
