"""Mergeable summaries, so the report summarises 15M rows shard by shard in bounded memory.

* ``Moments``: count, mean, variance (Chan et al.'s parallel update), min, max and a histogram over
  **fixed** bin edges chosen before any data is seen. Two summaries of different shards merge exactly; the
  result does not depend on the order of the shards. Quantiles come from the histogram (bin resolution).
* ``NGramSketch``: distinct n-grams from 64-bit hashes. It keeps the hashes exactly (a sorted unique
  ``uint64`` array, 8 bytes per distinct n-gram) while there are at most ``exact_limit`` of them and always
  also feeds a HyperLogLog (2^p one-byte registers, relative error ≈ 1.04/√2^p: 0.8 % at p = 14). Past the
  limit the exact set is dropped and the HyperLogLog answers. Why this choice: the grammar captions of a
  face dataset have a small vocabulary (the paper counts ~160K distinct 4-grams in 15M captions), which fits
  exactly in a few MB, while raw alt-texts have hundreds of millions of distinct 4-grams, where an exact set
  would not fit but a HyperLogLog (merge = element-wise max) still does in 16 KB. Hash collisions among
  64-bit hashes are negligible below ~10^9 distinct n-grams.
"""

from __future__ import annotations

import math

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class Moments:
    """Running moments plus a fixed-bin histogram of one numeric metric."""

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.zeros(len(self.edges) + 1, dtype=np.int64)  # [under, bins..., over]
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values) -> None:
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if not len(x):
            return
        other = Moments(self.edges)
        other.n, other.mean, other.m2 = len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum())
        other.min, other.max = float(x.min()), float(x.max())
        idx = np.searchsorted(self.edges, x, side="right")  # 0 = under the first edge
        idx[x == self.edges[-1]] = len(self.edges) - 1  # the last bin is closed
        other.counts = np.bincount(idx, minlength=len(self.edges) + 1).astype(np.int64)
        self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms with different bin edges cannot be merged")
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        return self

    @property
    def var(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else float("nan")

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.n > 1 else float("nan")

    def quantile(self, q: float) -> float:
        """Quantile by linear interpolation inside the histogram bin that holds it."""
        if self.n == 0:
            return float("nan")
        target = q * self.n
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            return self.min
        if i > len(self.edges) - 1:
            return self.max
        lo, hi = self.edges[i - 1], self.edges[i]
        before = cum[i - 1]
        frac = (target - before) / max(self.counts[i], 1)
        return float(np.clip(lo + frac * (hi - lo), self.min, self.max))

    def summary(self) -> dict:
        return {"n": self.n, "mean": self.mean if self.n else None, "std": self.std, "min": self.min if self.n else None,
                "max": self.max if self.n else None, "median": self.quantile(0.5)}

    def hist(self) -> dict:
        """Bin edges and counts of the in-range bins (under/overflow reported separately)."""
        return {"edges": self.edges.tolist(), "counts": self.counts[1:-1].tolist(),
                "under": int(self.counts[0]), "over": int(self.counts[-1])}


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixing bijection on uint64 (wrap-around arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class HyperLogLog:
    def __init__(self, p: int = 14):
        self.p = p
        self.registers = np.zeros(1 << p, dtype=np.uint8)

    def add(self, hashes: np.ndarray) -> None:
        h = np.asarray(hashes, dtype=np.uint64)
        if not len(h):
            return
        p = np.uint64(self.p)
        idx = (h >> (np.uint64(64) - p)).astype(np.int64)
        rest = h & ((np.uint64(1) << (np.uint64(64) - p)) - np.uint64(1))
        width = 64 - self.p
        # rank = leading zeros of the (64-p)-bit remainder + 1; bit_length via frexp on exact float halves
        hi = (rest >> np.uint64(32)).astype(np.float64)
        lo = (rest & np.uint64(0xFFFFFFFF)).astype(np.float64)
        bl_hi = np.frexp(hi)[1]  # bit_length for values < 2^32 is exact in float64
        bl_lo = np.frexp(lo)[1]
        bitlen = np.where(hi > 0, bl_hi + 32, bl_lo)
        rank = (width - bitlen + 1).astype(np.uint8)
        np.maximum.at(self.registers, idx, rank)

    def merge(self, other: "HyperLogLog") -> "HyperLogLog":
        np.maximum(self.registers, other.registers, out=self.registers)
        return self

    def copy(self) -> "HyperLogLog":
        out = HyperLogLog(self.p)
        out.registers = self.registers.copy()
        return out

    def estimate(self) -> float:
        m = float(1 << self.p)
        alpha = 0.7213 / (1 + 1.079 / m)
        est = alpha * m * m / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int64))))
        zeros = int((self.registers == 0).sum())
        if est <= 2.5 * m and zeros:
            est = m * math.log(m / zeros)  # linear counting for small sets
        return est


class NGramSketch:
    """Distinct hashes: exact while small, HyperLogLog beyond ``exact_limit`` (see module docstring)."""

    def __init__(self, exact_limit: int = 5_000_000, p: int = 14):
        self.exact_limit = exact_limit
        self.exact: np.ndarray | None = np.zeros(0, dtype=np.uint64)
        self.hll = HyperLogLog(p)

    def add(self, hashes: np.ndarray) -> None:
        h = np.unique(np.asarray(hashes, dtype=np.uint64))
        self.hll.add(h)
        if self.exact is not None:
            self.exact = np.union1d(self.exact, h)
            if len(self.exact) > self.exact_limit:
                self.exact = None

    def merge(self, other: "NGramSketch") -> "NGramSketch":
        self.hll.merge(other.hll)
        if self.exact is not None and other.exact is not None:
            self.exact = np.union1d(self.exact, other.exact)
            if len(self.exact) > self.exact_limit:
                self.exact = None
        else:
            self.exact = None
        return self

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    def count(self) -> float:
        return int(len(self.exact)) if self.exact is not None else float(self.hll.estimate())


def hash_values(values) -> np.ndarray:
    """64-bit hashes of values for the distinct-count sketches: integers through splitmix64, anything else
    through BLAKE2b of its ``str`` (stable across processes, unlike ``hash``)."""
    import hashlib

    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return splitmix64(arr.astype(np.int64).astype(np.uint64))
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode("utf-8"), digest_size=8).digest(), "little")
                        for v in arr.ravel().tolist()), dtype=np.uint64, count=arr.size)


class Distinct(NGramSketch):
    """Distinct values (identities, image keys, captions, words): exact while at most ``exact_limit``, then
    HyperLogLog. Add a shard's distinct values; ``count()`` is an int."""

    def add_values(self, values) -> None:
        self.add(hash_values(values))

    def count(self) -> int:
        return int(len(self.exact)) if self.exact is not None else int(round(self.hll.estimate()))
