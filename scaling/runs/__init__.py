"""Run folders and what is read from them.

    runfiles.py    the files of a run folder, written atomically, and its lock
    results.py     the point folders of a sweep -> one results table + learning curves
"""
