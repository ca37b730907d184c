"""Text metrics of captions: words, sentences, readability and n-gram hashes.

Tokenisation is deliberately simple and fixed (lower-cased runs of letters, digits and apostrophes), so the
same caption always gives the same counts. Sentences end at ``.``, ``!`` or ``?``.

Readability is textstat's Flesch reading ease with syllables counted by pyphen: textstat ≥ 0.7.4 would
otherwise fetch NLTK's CMU dictionary from the internet on first use, which a reproducible offline run
must not do (``_offline_textstat``).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from facecaption.core.sketch import splitmix64

WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")
NGRAM_N = (1, 2, 3, 4)
_MULT = np.uint64(0x100000001B3)  # FNV prime: the polynomial step that chains word hashes into n-gram hashes


def words(text: str | None) -> list[str]:
    return WORD.findall((text or "").lower())


def sentences(text: str | None) -> list[str]:
    return [s for s in (p.strip() for p in SENTENCE_END.split(text or "")) if words(s)]


def words_per_sentence(text: str | None) -> list[int]:
    return [len(words(s)) for s in sentences(text)]


_TEXTSTAT = None


def _offline_textstat():
    """textstat with syllables from pyphen only (no NLTK download at run time)."""
    global _TEXTSTAT
    if _TEXTSTAT is None:
        import textstat
        from textstat.backend.counts import _count_syllables

        _count_syllables.get_cmudict = lambda lang: None  # lookups raise TypeError -> pyphen fallback
        _TEXTSTAT = textstat
    return _TEXTSTAT


def flesch(text: str | None) -> float:
    if not words(text):
        return float("nan")
    return float(_offline_textstat().flesch_reading_ease(text))


_WORD_HASH: dict[str, int] = {}


def word_hash(w: str) -> int:
    h = _WORD_HASH.get(w)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
        if len(_WORD_HASH) < 2_000_000:
            _WORD_HASH[w] = h
    return h


def ngram_hashes(texts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every text (n-grams never cross texts).

    Returns (hashes, owner) where owner[i] is the index of the text hash i came from. Vectorised over all
    texts at once: word hashes are laid end to end and an n-gram starting at position i is kept only if it
    ends inside the same text.
    """
    toks = [words(t) for t in texts]
    lengths = np.array([len(t) for t in toks], dtype=np.int64)
    flat = np.array([word_hash(w) for t in toks for w in t], dtype=np.uint64)
    owner_of_pos = np.repeat(np.arange(len(toks)), lengths)
    end_of_pos = np.repeat(np.cumsum(lengths), lengths)
    valid = np.arange(len(flat)) + n <= end_of_pos
    starts = np.flatnonzero(valid)
    g = flat[starts].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            g = splitmix64(g * _MULT + flat[starts + k])
    g = splitmix64(g ^ np.uint64(n))  # different n never collide by construction
    return g, owner_of_pos[starts]


def text_row(text: str | None) -> dict:
    """Per-caption metrics: words, sentences, words per sentence (list), Flesch reading ease."""
    wps = words_per_sentence(text)
    n_words = len(words(text))
    return {"words": n_words, "sentences": len(wps), "words_per_sentence": wps,
            "flesch": flesch(text) if n_words else float("nan")}


def perplexity(texts: list[str], model_dir: str, batch: int = 16) -> list[float]:
    """Per-text perplexity under a local Hugging Face causal LM (``local_files_only``; nothing downloaded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional dependency

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t or "", return_tensors="pt").input_ids
            if ids.shape[1] < 2:
                out.append(float("nan"))
                continue
            loss = model(ids, labels=ids).loss
            out.append(float(torch.exp(loss)))
    return out
