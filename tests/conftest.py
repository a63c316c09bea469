"""Test-session set-up: JAX's persistent compilation cache, on from the first test; the
`run_sweep_main` and `analysis_main` fixtures (a command of run_sweep.py or of
`python -m analysis`, run in this process).

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

import contextlib
import subprocess
from pathlib import Path

import pytest

from scaling.runtime import enable_compilation_cache

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    enable_compilation_cache()


def _in_process(capfd, prog: str, main, args) -> subprocess.CompletedProcess:
    capfd.readouterr()
    with contextlib.chdir(ROOT):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors (exit 2), --help
            rc = e.code
    out = capfd.readouterr()
    return subprocess.CompletedProcess([prog, *map(str, args)], rc, out.out, out.err)


@pytest.fixture
def run_sweep_main(capfd):
    """cli(*args) -> CompletedProcess: `python run_sweep.py *args` (from the repository's
    root) run by scaling.cli.main in this process, its exit status what main returns (what
    run_sweep.py exits with), its output captured. For the tests of a command's checks and
    messages: a subprocess costs ~1.5 s of imports, ~3 s with JAX's. Each command keeps
    tests that run the real script in a subprocess."""
    from scaling.cli import main

    return lambda *args: _in_process(capfd, "run_sweep.py", main, args)


@pytest.fixture
def analysis_main(capfd):
    """The same for `python -m analysis *args` (analysis.__main__.main), which keeps tests
    in a subprocess too (tests/test_analysis_report.py, test_analysis_lrlaw.py,
    test_analysis_noise.py)."""
    from analysis.__main__ import main

    return lambda *args: _in_process(capfd, "python -m analysis", main, args)
