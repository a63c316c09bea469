"""Is exact match what independent token errors give? A paired bootstrap and a permutation test.

Input: one sub-task's teacher-forced hit matrix `hit` [n, A] (entry (i, j): the model's
argmax at answer position j of instance i is right; entries past an answer's length are
ignored) and the answer lengths `lens` [n] (closing [eot] included). Greedy output equals
the answer iff every teacher-forced argmax is right, so exact match EM = mean over instances
of "all hits". Two predictions of EM from the same matrix:

- `positions`: the product over positions j of the hit rate at j (within each answer
  length, weighted by the instances of that length) -- what independent token errors give
  at each position's own accuracy. Under independence (rows iid, columns independent
  within a row) E[EM] equals E[prod p_j] exactly, so the null is EM - prod p_j = 0;
- `pl`: p^L with p the pooled per-token accuracy and L the mean answer length (Schaeffer et
  al. 2023). Pooling an easy closing token with hard digits makes p^L exceed EM even under
  independence, so this difference is descriptive, not a test of independence.

Both differences are computed from the same instances, so they are strongly correlated with
EM; adding their variances (the old z) has almost no power. Here the instances (rows) are
resampled jointly and both EM and the prediction recomputed in each replicate, so the
bootstrap distribution of the *difference* carries the correlation. The point estimates use
all instances and do not depend on the bootstrap's size or seed; the stderr (sd of the
replicates), the 95 % percentile interval and the p-value do, by Monte-Carlo error
(about sqrt(p (1 - p) / n_boot) for the p-value). p-value: two-sided, from the normal
approximation z = d / sd(d*), NaN when every replicate gives the same difference. Neither
it nor the percentile rule is a test to trust where few instances carry the difference
(several errors in one answer are rare at p near 1, any all-right answer is rare at p^L
near 0): benchmarks/emergence_size.py finds sizes of 0.22 and 0.58 there. The test of
independence is `permutation_p`, whose size is nominal; the paired bootstrap gives the
difference's interval.

Pure numpy: scaling/train/taskeval.py records these per run, analysis/emergence.py combines runs
from the results table, benchmarks/emergence_size.py simulates size and power.
"""

from __future__ import annotations

import math

import numpy as np

N_BOOT = 1000


def _stats(w: np.ndarray, hit: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """EM, prod p_j and p^L for each row of instance weights w [B, n] (a row: how often
    each instance is drawn; all ones = the data as observed)."""
    mask = np.arange(hit.shape[1])[None, :] < lens[:, None]
    h = (hit & mask).astype(float)
    allright = (h.sum(1) == lens).astype(float)
    tot = w.sum(1)
    em = w @ allright / tot
    ind = np.zeros(len(w))
    for L in np.unique(lens):
        rows = lens == L
        wl = w[:, rows]
        nl = wl.sum(1)
        pj = wl @ h[rows, :L] / np.maximum(nl, 1e-300)[:, None]  # [B, L]
        ind += nl * np.prod(pj, axis=1)
    ind /= tot
    p = w @ h.sum(1) / (w @ lens.astype(float))
    pl = p ** (w @ lens.astype(float) / tot)
    return em, ind, pl


def paired_excess(hit, lens, *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """EM - prod p_j ("positions") and EM - p^L ("pl") with their paired-bootstrap stderr
    (`_se`), 95 % percentile interval (`_lo`, `_hi`) and two-sided p-values (`_p`: normal
    approximation; `_p_percentile`: 2 x the smaller share of replicates on either side of
    0), and `prod_se`, the bootstrap sd of prod p_j alone (see the module doc)."""
    hit = np.asarray(hit, bool)
    lens = np.asarray(lens, int)
    n = len(lens)
    em0, ind0, pl0 = (float(a[0]) for a in _stats(np.ones((1, n)), hit, lens))
    out = {"em": em0, "positions": em0 - ind0, "pl": em0 - pl0, "n_boot": n_boot}
    if n < 2 or n_boot < 2:
        out["prod_se"] = math.nan
        for k in ("positions", "pl"):
            out.update({f"{k}{s}": math.nan for s in ("_se", "_lo", "_hi", "_p", "_p_percentile")})
        return out
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    em, ind, pl = _stats(w, hit, lens)
    out["prod_se"] = float(np.std(ind, ddof=1))  # of prod p_j alone (the old, unpaired z)
    for k, d in (("positions", em - ind), ("pl", em - pl)):
        se = float(np.std(d, ddof=1))
        lo, hi = np.percentile(d, [2.5, 97.5])
        defined = se > 1e-12 * max(1.0, abs(out[k]))
        out.update({f"{k}_se": se if defined else math.nan, f"{k}_lo": float(lo),
                    f"{k}_hi": float(hi),
                    f"{k}_p": (math.erfc(abs(out[k]) / se / math.sqrt(2)) if defined
                               else math.nan),
                    f"{k}_p_percentile": float(min(1.0, 2 * min(np.mean(d <= 0),
                                                                np.mean(d >= 0))))})
    return out


def permutation_p(hit, lens, *, n_perm: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided p-value of "token errors are independent across answer positions" (rows
    iid, the positions of a row independent): each position's column is permuted across the
    instances of the same answer length, independently per column, which keeps every p_j
    (so prod p_j) and draws EM from its exact null distribution given them, whose mean is
    prod p_j. p = (1 + #{|EM* - prod p_j| >= |EM - prod p_j|}) / (1 + n_perm): size at most
    alpha up to Monte-Carlo error, below it where EM is discrete (few instances can
    differ), where the bootstrap's is not (module doc)."""
    hit, lens = np.asarray(hit, bool), np.asarray(lens, int)
    n = len(lens)
    if n < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    mask = np.arange(hit.shape[1])[None, :] < lens[:, None]
    h = hit | ~mask  # positions past an answer's end count as right
    em0 = int(np.all(h, axis=1).sum())
    mean = 0.0  # E[#all right] under the permutations: sum over lengths of n_L prod p_j
    em = np.zeros(n_perm, np.int64)
    for L in np.unique(lens):
        hl = h[lens == L, :L]
        mean += len(hl) * float(np.prod(hl.mean(0)))
        ok = np.ones((n_perm, len(hl)), bool)
        for j in range(L):
            ok &= hl[rng.permuted(np.broadcast_to(np.arange(len(hl)), ok.shape), axis=1), j]
        em += ok.sum(1)
    far = np.abs(em - mean) >= abs(em0 - mean) - 1e-9
    return float((1 + np.sum(far)) / (1 + n_perm))
