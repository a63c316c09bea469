"""Compute accounting: what a run costs and how fast it goes.

    counts.py      parameter counts and FLOPs per token (each family's closed form, and
                   XLA's count of a compiled executable)
    xla_count.py   XLA's FLOP count of a step program, every loop trip counted (C_xla)
    peaks.py       device peak FLOP/s (a table for accelerators, a measured CPU peak) and MFU
    memory.py      memory per device of a training step (closed form: parameters, optimizer
                   state, gradients, activations with and without remat), device memory
"""
