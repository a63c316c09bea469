"""Training one run: the step, the optimizer, the drivers, and the loop around them.

    step.py          the pure per-device training step (Trainer) every driver reuses
    optimizers.py    the optimizers, one path for all of them (clipping, decay, µP, LARS/LAMB)
    schedules.py     learning-rate schedules: one formula with runtime values
    param_groups.py  per parameter: decay mask, trust-ratio mask, µP multiplier
    packing.py       parameters packed into a few flat vectors while they train
    parallel.py      data-parallel drivers (one device, pmap, shard_map) of the step
    mesh.py          the mesh driver: FSDP and tensor parallelism over (data, fsdp, model)
    checkpoint.py    orbax checkpoints: train state + metadata
    tracking.py      trackers (JSON lines, TensorBoard, Weights & Biases) and the profiler
    stopping.py      stopping cleanly on SIGTERM / Ctrl-C

    loop.py          one run in one folder, resumable at any moment: `train`, the step loop
    prepare.py       phase 1: every check bad input can fail (trunk included); `Setup`
    restore.py       phase 2: the state resumed, branched from a trunk or fresh; saved
    compiled.py      phase 3: the step and eval programs, one per shape and process
    evaluate.py      the evaluator and when the curve is evaluated
    taskeval.py      held-out instances of the mixed-in tasks, scored four ways per eval
    taskstats.py     exact match against independent token errors: the tests taskeval records
    monitor.py       the divergence monitor (`Diverged`)
    record.py        what the run writes: metrics rows, result.json's fields
"""
