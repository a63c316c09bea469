"""Executors: run the points of a sweep, each exactly once, surviving any crash.

    point_runner.py  one point in its folder: what every executor calls
    local.py         this machine: side by side in worker processes
    slurm.py         a SLURM job array (submitit)
"""
