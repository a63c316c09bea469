"""Training one run: the step, the optimizer, the drivers, and the loop around them.

    step.py        the pure per-device training step (Trainer) every driver reuses
    optim.py       optimizers and learning-rate schedules, one path for all of them
    packing.py     parameters packed into a few flat vectors while they train
    parallel.py    data-parallel drivers (one device, pmap, shard_map) of the step
    checkpoint.py  orbax checkpoints: train state + metadata
    tracking.py    trackers (JSON lines, TensorBoard, Weights & Biases) and the profiler
    stopping.py    stopping cleanly on SIGTERM / Ctrl-C
    loop.py        one run in one folder, resumable at any moment
"""
