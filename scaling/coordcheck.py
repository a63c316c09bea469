"""`python -m scaling.coordcheck`: kept as the command's name; the check lives in
scaling/evaluation/coordcheck.py."""

from scaling.evaluation.coordcheck import main

if __name__ == "__main__":
    raise SystemExit(main())
