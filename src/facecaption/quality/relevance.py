"""Text–image relevance: cosine similarity of each pair, and how often a caption ranks its own image first.

``Encoder`` is the one interface both scorers meet: ``encode_images(pil_images)`` and ``encode_texts(texts)``
returning L2-normalised numpy rows. ``flip_encoder`` wraps the trained FLIP checkpoint through the core's
open_clip loader (:mod:`facecaption.core.openclip`); ``ClipScorer`` (``facecaption.quality.image``) wraps local
open_clip weights through the same loader.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Encoder(Protocol):
    def encode_images(self, images: list) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


class _Flip:
    def __init__(self, checkpoint: str, arch: str, batch: int):
        from facecaption.core import openclip as fm

        self._fm = fm
        self.model, self.preprocess, self.tokenizer = fm.load(checkpoint, arch, device="cpu")
        self.batch = batch

    def encode_images(self, images):
        return np.asarray(self._fm.encode_images(self.model, self.preprocess, images, self.batch))

    def encode_texts(self, texts):
        return np.asarray(self._fm.encode_texts(self.model, self.tokenizer, texts, self.batch))


def flip_encoder(checkpoint: str, arch: str | None, batch: int = 64) -> tuple[Encoder | None, str]:
    """(encoder, "") or (None, why not)."""
    from pathlib import Path

    if not Path(checkpoint).exists():
        return None, f"no FLIP checkpoint at {checkpoint}"
    if not arch:
        return None, "train.arch is not set"
    try:
        return _Flip(checkpoint, arch, batch), ""
    except ImportError as exc:
        return None, f"the train stage's model loader is not available ({exc})"
    except Exception as exc:  # noqa: BLE001 - reported in the paper rather than failing the report
        log.exception("cannot load FLIP from %s", checkpoint)
        return None, f"loading the FLIP checkpoint failed: {type(exc).__name__}: {exc}"


def pair_order(keys: list[str], seed: int = 0) -> list[int]:
    """A fixed pseudo-random order of pairs, keyed by the pair keys (not by their position)."""
    h = [hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: h[i])


def relevance(encoder: Encoder, images: list, texts: list[str], keys: list[str], candidates: int,
              seed: int = 0) -> dict:
    """Similarity of each (image, caption) pair and the share of captions ranking their own image first
    among ``candidates`` images (the pair's own and candidates-1 others, in fixed groups)."""
    img = np.asarray(encoder.encode_images(images), dtype=np.float64)
    txt = np.asarray(encoder.encode_texts(texts), dtype=np.float64)
    sims = (img * txt).sum(axis=1)
    order = pair_order(keys, seed)
    hits, total = 0, 0
    for g in range(len(order) // candidates):
        idx = order[g * candidates:(g + 1) * candidates]
        s = txt[idx] @ img[idx].T  # caption i against the group's images
        own = np.diag(s)
        # a tie with another image counts as a miss: a caption must single out its own image
        better_or_equal = (s >= own[:, None] - 1e-9).sum(axis=1) - 1
        hits += int((better_or_equal == 0).sum())
        total += len(idx)
    return {"pairs": len(keys), "similarity_mean": float(sims.mean()) if len(sims) else None,
            "similarity_std": float(sims.std()) if len(sims) else None,
            "similarity_median": float(np.median(sims)) if len(sims) else None,
            "rank1_share": hits / total if total else None, "rank1_groups": total // candidates if total else 0,
            "candidates": candidates, "chance": 1.0 / candidates, "similarities": sims.tolist()}
