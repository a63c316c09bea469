"""Near-duplicate detection: shingles and Jaccard against a plain-Python reference."""

import random

import numpy as np

from scaling.neardup import (NEAR_DUP_THRESHOLD, intersections, jaccard, near_duplicate_pairs,
                             normalize, shingles)


def reference_shingles(text: str, k: int) -> set[bytes]:
    raw = normalize(text)
    return {raw[i:i + k] for i in range(len(raw) - k + 1)} or {raw}


def test_shingles_and_jaccard_match_python_sets():
    rng = random.Random(0)
    for k in (16, 5, 3):
        for _ in range(200):
            a = "".join(rng.choice("ab \n\t") for _ in range(rng.randint(0, 70)))
            b = "".join(rng.choice("ab \n\t") for _ in range(rng.randint(0, 70)))
            ra, rb = reference_shingles(a, k), reference_shingles(b, k)
            sa, sb = shingles(a, k), shingles(b, k)
            assert len(sa) == len(ra) and np.all(sa[1:] > sa[:-1])  # sorted, unique
            assert jaccard(sa, sb) == len(ra & rb) / len(ra | rb)


def test_whitespace_is_normalized():
    assert np.array_equal(shingles("def f(x):\n    return x  + 1\n"),
                          shingles("def f(x): return x\t+ 1 "))
    assert not np.array_equal(shingles("def f(x): return x + 1"),
                              shingles("def f(y): return y + 1"))


def test_pairs_are_exact_at_the_threshold():
    rng = random.Random(1)
    base = [f"line {i}: {rng.random():.12f}\n" for i in range(200)]
    docs = {
        "same": "".join(base),
        "reindented": "".join("    " + line for line in base),
        "few_edits": "".join(base[:190] + [f"edit {i}\n" for i in range(10)]),
        "half": "".join(base[:100]),
        "other": "".join(f"other {rng.random():.12f}\n" for _ in range(200)),
    }
    sets = {name: shingles(text) for name, text in docs.items()}
    names = list(docs)
    pairs = near_duplicate_pairs([sets["same"]], [sets[n] for n in names])
    got = {names[j]: sim for _, j, sim in pairs}
    expect = {n: jaccard(sets["same"], sets[n]) for n in names}
    assert set(got) == {n for n, s in expect.items() if s >= NEAR_DUP_THRESHOLD}
    assert set(got) == {"same", "reindented", "few_edits"}
    assert all(abs(got[n] - expect[n]) < 1e-12 for n in got)
    assert expect["half"] < 0.55 and expect["other"] < 0.01
    counts = intersections([sets["same"], sets["half"]], [sets[n] for n in names]).toarray()
    for i, q in enumerate(["same", "half"]):
        for j, n in enumerate(names):
            assert counts[i, j] == np.intersect1d(sets[q], sets[n]).size
