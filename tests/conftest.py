"""Test-session set-up: JAX's persistent compilation cache, on from the first test.

The command line and the sweep workers turn the cache on themselves
(scaling.runtime.enable_compilation_cache: ~/.cache/scalinglab/xla, or
SCALINGLAB_COMPILE_CACHE; SCALINGLAB_NO_COMPILE_CACHE=1 turns it off), so the tests that
run them in subprocesses already share it. The tests that train in this process (train(),
Trainer, run_sweep with workers=1) compiled every shape anew until the first in-process
CLI or sweep call happened to turn it on; now they load what a subprocess, an earlier
test or an earlier session compiled (a tiny run's first train(): ~16 s -> ~8 s, its step
and eval programs ~9 s -> ~3 s). What a cached program computes is what a fresh compile
computes: the cache key is the program, the compiler options and the JAX version.
"""

from scaling.runtime import enable_compilation_cache


def pytest_configure(config):
    enable_compilation_cache()
