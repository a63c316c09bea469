"""Executors: run the points of a sweep, each exactly once, surviving any crash.

    sweep.py         the whole sweep: plan, sweep folder, pre-flight, executor, stages, tables
    point_runner.py  one point in its folder: what every executor calls
    local.py         this machine: in this process, or side by side in worker processes
    order.py         the order to run points in (trunks first) and the queue handing them out
    slurm.py         a SLURM job array (submitit): records, refresh, submission, waiting
    slurm_job.py     inside a SLURM job: PointJob and its signal handling
    slurm_states.py  asking SLURM for job states (squeue, sacct)
"""
