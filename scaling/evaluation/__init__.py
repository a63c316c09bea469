"""What is measured about a model besides its training and eval loss.

    taskeval.py    held-out instances of the mixed-in tasks, scored four ways
    taskstats.py   exact match against independent token errors: the tests
    ngram.py       the Kneser-Ney n-gram baseline on the runs' own eval windows
    sampling.py    generation with temperature and top-k
    coordcheck.py  muP's coordinate check (python -m scaling.coordcheck)
"""
