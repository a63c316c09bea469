#!/usr/bin/env python3
"""Train language models, run scaling-law sweeps and fit the laws: see `--help`."""

import sys

from scaling.train.stopping import claim_early

if __name__ == "__main__":
    claim_early()  # a SIGTERM / Ctrl-C during the imports below stops `train` / `run` cleanly

from scaling.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
