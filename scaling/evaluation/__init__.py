"""What is measured about trained runs besides their loss curves (tools over train/).

    ngram.py       the Kneser-Ney n-gram baseline on the runs' own eval windows
    sampling.py    generation with temperature and top-k
    coordcheck.py  muP's coordinate check (python -m scaling.coordcheck)
"""
