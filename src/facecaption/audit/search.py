"""Nearest neighbours with faiss, laid out so the audit scales to a 15M-face pool.

**Which side is indexed.** The test splits are small (CelebA's test split: 19,962 faces; LFWA's: 6,469) and the
pool is large (15M). Each test split gets one index; the pool is streamed against it shard by shard (one caption
shard's crops in memory at a time) as queries. Memory is the test side's (20k × 512 float32 = 41 MB) plus one
shard, whatever the pool's size, and a shard's answers are final when the shard is read: no index of 15M vectors
is ever built, so nothing has to be trained, merged or sharded across processes.

**Flat or IVF.** With a few 10k test vectors, exact search (``IndexFlatIP``; ``IndexBinaryFlat`` for hashes) is
both exact and fast: every query costs one matrix product with the test side (``benchmarks/bench_audit.py``
measures it). Only when a test side holds more than ``audit.ivf_above`` vectors (1M by default: the case of
auditing against another web-scale set) does the index become ``IndexIVFFlat`` with ``nlist = 4 √n`` cells,
trained on the test vectors themselves, and ``audit.nprobe`` cells searched per query; recall then depends on
nprobe, which the benchmark reports. Hashes always use the exact binary index (8 bytes a vector: 1M hashes are 8
MB).

Both searches are range searches (every pair within the threshold, not just the nearest), so every test item a
pool crop copies is found.
"""

from __future__ import annotations

import math

import numpy as np


def binary_index(hashes: np.ndarray):
    import faiss

    index = faiss.IndexBinaryFlat(hashes.shape[1] * 8 if hashes.size else 64)
    if len(hashes):
        index.add(np.ascontiguousarray(hashes, dtype=np.uint8))
    return index


def hamming_pairs(index, queries: np.ndarray, radius: int) -> list[tuple[int, int, int]]:
    """(query row, indexed row, Hamming distance) for every pair at most ``radius`` bits apart."""
    if not len(queries) or index.ntotal == 0:
        return []
    lims, dist, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.uint8), radius + 1)  # < radius + 1
    return [(q, int(ids[j]), int(dist[j])) for q in range(len(queries)) for j in range(lims[q], lims[q + 1])]


def embedding_index(vectors: np.ndarray, kind: str = "auto", ivf_above: int = 1_000_000, nprobe: int = 32):
    """(index, kind used): exact inner product (``flat``), or ``ivf`` above ``ivf_above`` vectors (``auto``)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    use = kind if kind != "auto" else ("ivf" if n > ivf_above else "flat")
    if use == "flat" or n < 64:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, "flat"
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per cell
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)  # owns its quantizer
    # k-means on a seeded sample of 40 points per cell (faiss's floor is 39): training on all of a 1M-vector side
    # costs minutes and places the cells no better
    sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    faiss.extract_index_ivf(index).nprobe = min(nprobe, nlist)
    return index, "ivf"


def cosine_pairs(index, queries: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(query row, indexed row, cosine) for every pair with cosine >= ``threshold`` (L2-normalised vectors)."""
    if not len(queries) or index.ntotal == 0:
        return []
    # faiss returns inner products > radius: a hair below the threshold, then filtered exactly (in float32)
    lims, sims, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.float32), float(threshold) - 1e-6)
    t = np.float32(threshold)
    return [(q, int(ids[j]), float(sims[j])) for q in range(len(queries)) for j in range(lims[q], lims[q + 1])
            if sims[j] >= t]


def nearest(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indexed rows), each (n, min(k, ntotal)), best first; rows -1 where there are fewer."""
    k = min(k, index.ntotal)
    if not len(queries) or k == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
