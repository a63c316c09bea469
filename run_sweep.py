#!/usr/bin/env python3
"""Train language models, run scaling-law sweeps and fit the laws: see `--help`."""

import sys

from scaling.cli import main

if __name__ == "__main__":
    sys.exit(main())
