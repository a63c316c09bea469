"""The report: a results table in, a folder of figures, tables and summary.md out.

    build.py        analyze(source): loads the table, writes the Data section, calls the rest
    writer.py       Report: what the sections add to; captions; summary.md
    powerlaws.py    L(N), L(D), L(C) on the Pareto front
    parametric.py   Approach 3 and Kaplan's L(N, D)
    isoflop.py      Approach 2: the allocation exponents
    curves.py       the frontier and Approach 1
    predictions.py  the compute-optimal allocation and predictions
    backtest.py     "Does the law extrapolate?"
    optimizers.py   the optimizer comparison
    families.py     model families and the n-gram reference
    batch.py        the critical batch size (>= 3 batch sizes)
    tables.py       Markdown and LaTeX (booktabs) tables
"""
