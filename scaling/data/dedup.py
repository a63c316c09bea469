"""Near-duplicates across the train/validation split, removed from a read corpus.

After the group split (`scaling.data.heldout`), near-duplicates across the split are
removed (`scaling.data.neardup`, on the sets of 8-byte whitespace-normalized shingles):
every training document whose exact Jaccard similarity with a held-out document is >=
0.8, or which contains >= 80 % of a held-out document's shingles or has >= 80 % of its
own inside one (containment; the smaller of the two must have >= 256 shingles), is
dropped; a held-out document at Jaccard >= 0.8 with one kept before it in stream order
is dropped too (so the eval set does not weigh one template many times). Dropped
documents are in neither stream. Hence no validation document has a >= 0.8-similar
document in training, nor one that contains it. The decision (which documents are
dropped, and the pairs found, with both measures) is cached in
`<cache>/splits/<key>.json`, keyed by the corpus content, `val_fraction`, the rule and
the format version, and its counts are in the token cache's .json and in `describe()`
(result.json's `data`): `dropped_train_documents`, of them
`dropped_train_by_containment`, `dropped_val_documents`. The pass costs ~3 s on the full
standard library (one core, unloaded). `scaling.data.dataset.read_corpus` reads a corpus
and runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from scaling.data import neardup
from scaling.data.cache import FORMAT_VERSION, resolve_cache_dir
from scaling.data.corpora import Corpus, document_chunks
from scaling.data.order import ORDER_SALT, name_hash
from scaling.runs.runfiles import atomic_write_text

if TYPE_CHECKING:
    from scaling.config import DataConfig

log = logging.getLogger(__name__)

_NEAR_DUP_CHUNK_BYTES = 64 << 20  # text shingled at once by the near-duplicate pass


def find_near_duplicates(corpus: Corpus
                         ) -> tuple[np.ndarray, list[tuple[str, str, float, float]]]:
    """(dropped mask, pairs): the near-duplicate rule of the module docstring.

    Pairs are (held-out name, other name, Jaccard, containment) for every held-out document
    and every training document near it by either measure (`neardup.overlap_pairs`), and
    every other held-out document at Jaccard >= neardup.NEAR_DUP_THRESHOLD."""
    docs = corpus.documents
    val_idx = np.flatnonzero(corpus.is_val)
    val_sets = [neardup.shingles(docs[i].text) for i in val_idx]
    found = []
    start = 0
    for chunk in document_chunks(docs, _NEAR_DUP_CHUNK_BYTES):  # bounded memory on large corpora
        sets = [neardup.shingles(d.text) for d in chunk]
        found += [(q, start + j, jac, cont)
                  for q, j, jac, cont in neardup.overlap_pairs(val_sets, sets)]
        start += len(chunk)
    dropped = np.zeros(len(docs), dtype=bool)
    partners: dict[int, list[int]] = {}
    pairs = []
    for q, j, jac, cont in found:
        i = int(val_idx[q])
        if i == j:
            continue
        if corpus.is_val[j] and (j < i or jac < neardup.NEAR_DUP_THRESHOLD):
            continue  # a held-out pair is listed once, and held out together by Jaccard only
        pairs.append((docs[i].name, docs[j].name, round(jac, 4), round(cont, 4)))
        if corpus.is_val[j]:
            partners.setdefault(i, []).append(j)
            partners.setdefault(j, []).append(i)
        else:
            dropped[j] = True
    kept: set[int] = set()
    for i in sorted((int(i) for i in val_idx), key=lambda i: name_hash(ORDER_SALT, docs[i].name)):
        if any(j in kept for j in partners.get(i, ())):
            dropped[i] = True
        else:
            kept.add(i)
    return dropped, pairs


def remove_near_duplicates(corpus: Corpus, data_cfg: "DataConfig") -> None:
    """Set corpus.dropped and corpus.near_duplicates, from the split cache if present."""
    ident = json.dumps({"format": FORMAT_VERSION, "corpus": corpus.sha256,
                        "val_fraction": repr(float(data_cfg.val_fraction)),
                        "threshold": neardup.NEAR_DUP_THRESHOLD,
                        "shingle": neardup.SHINGLE_BYTES, "rule": "jaccard|containment",
                        "min_contained": neardup.MIN_CONTAINED_SHINGLES}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    path = resolve_cache_dir(data_cfg) / "splits" / f"{key}.json"
    index = {d.name: i for i, d in enumerate(corpus.documents)}
    seconds = None  # set when computed here, not read from the cache
    try:
        cached = json.loads(path.read_text())
        dropped = np.zeros(len(corpus.documents), dtype=bool)
        dropped[[index[n] for n in cached["dropped"]]] = True
        pairs = [(a, b, float(x), float(y)) for a, b, x, y in cached["pairs"]]
    except FileNotFoundError:
        dropped = None
    except Exception as e:  # anything odd: recompute
        log.warning("split cache %s not trusted (%s); recomputing", path, e)
        dropped = None
    if dropped is None:
        t0 = time.perf_counter()
        dropped, pairs = find_near_duplicates(corpus)
        seconds = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({
            "key": key, "corpus": corpus.spec, "corpus_sha256": corpus.sha256,
            "dropped": [d.name for d, x in zip(corpus.documents, dropped) if x],
            "pairs": pairs, "seconds": round(seconds, 3)}, indent=0))
    corpus.dropped = dropped
    corpus.near_duplicates = pairs
    if seconds is not None:
        log.info("near-duplicates of %s: %s (%.1f s)", corpus.spec, corpus.split_summary(), seconds)
