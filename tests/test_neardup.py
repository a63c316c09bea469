"""Near-duplicate detection: shingles, Jaccard and containment against a plain-Python
reference."""

import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from scaling.data.neardup import (MIN_CONTAINED_SHINGLES, NEAR_DUP_THRESHOLD, intersections, jaccard,
                             near_duplicate_pairs, normalize, overlap_pairs, shingles)


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


@pytest.mark.slow
def test_containment_finds_a_copy_inside_a_larger_document():
    rng = random.Random(2)
    inner = "".join(f"line {i}: {rng.random():.12f}\n" for i in range(100))
    docs = {
        "inner": inner,
        "wrapper": "".join(f"pre {rng.random():.12f}\n" for _ in range(80)) + inner
                   + "".join(f"post {rng.random():.12f}\n" for _ in range(40)),
        "most": inner[:int(0.85 * len(inner))] + "".join(f"x {rng.random():.12f}\n" for _ in range(300)),
        "part": inner[:int(0.6 * len(inner))] + "".join(f"y {rng.random():.12f}\n" for _ in range(300)),
        "stub": "# a package\n",  # boilerplate, quoted whole by the next document
        "quotes_stub": "# a package\n" + "".join(f"z {rng.random():.12f}\n" for _ in range(200)),
        "other": "".join(f"other {rng.random():.12f}\n" for _ in range(100)),
    }
    names = list(docs)
    sets = [shingles(docs[n]) for n in names]
    ref = [{normalize(docs[n])[k:k + 8] for k in range(len(normalize(docs[n])) - 7)} for n in names]
    got = {(names[i], names[j]): (jac, cont) for i, j, jac, cont in overlap_pairs(sets, sets)}
    for a in range(len(names)):
        for b in range(len(names)):
            inter = len(ref[a] & ref[b])
            small = min(len(ref[a]), len(ref[b]))
            jac = inter / len(ref[a] | ref[b])
            cont = inter / small if small >= MIN_CONTAINED_SHINGLES else 0.0
            near = jac >= NEAR_DUP_THRESHOLD or cont >= NEAR_DUP_THRESHOLD
            assert ((names[a], names[b]) in got) == near, (names[a], names[b], jac, cont)
            if near:
                assert got[names[a], names[b]] == pytest.approx((jac, cont), abs=1e-12)
    # the copy inside a larger file: Jaccard misses it, containment does not
    jac, cont = got["inner", "wrapper"]
    assert jac < 0.6 and cont > 0.99
    assert ("inner", "most") in got and ("inner", "part") not in got
    # a short stub inside a large file is below the floor: not a near-duplicate
    assert len(sets[names.index("stub")]) < MIN_CONTAINED_SHINGLES
    assert ("stub", "quotes_stub") not in got
    assert near_duplicate_pairs([sets[0]], [sets[1]]) == []  # the Jaccard rule alone


def test_the_stdlib_grammar_test_copy_is_contained():
    """The issue's example: lib2to3's copy of the grammar test inside test/test_grammar.py."""
    root = Path(sysconfig.get_paths()["stdlib"])
    a, b = root / "lib2to3/tests/data/py3_test_grammar.py", root / "test/test_grammar.py"
    if not (a.exists() and b.exists()):
        pytest.skip("this Python's standard library has no lib2to3 grammar test copy")
    sa, sb = shingles(a.read_text()), shingles(b.read_text())
    [(_, _, jac, cont)] = overlap_pairs([sa], [sb])
    assert jac < NEAR_DUP_THRESHOLD <= cont
    assert 0.85 < cont < 0.95 and 0.4 < jac < 0.6
