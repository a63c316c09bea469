"""Run folders and what is read from them.

    runfiles.py    the files of a run folder, written atomically, and read back checked
    lock.py        the run folder's lock: one process trains in a folder at a time
    results.py     the point folders of a sweep -> one results table + learning curves
"""
