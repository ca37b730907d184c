"""Quality stage, per shard: image metrics of every aligned face and text metrics of every caption.

Inputs (by name): ``pairs``, the captions shard (tar: ``<fkey>.jpg`` aligned crop, ``<fkey>.txt``; ``captions``,
its parquet: ``key,image_key,caption,captions,grammar_caption,rewritten,alt_text,...``), ``records``, the
collect parquet (source alt-texts) and ``truth``, the collect truth parquet (synthface's ``degrade`` per image;
empty for real sources).

Outputs:

* ``quality``, ``results/quality/<shard>.parquet``: one row per face: ``key, image_key, share_bucket, degrade,
  excluded_reason`` + image metrics (``width, height, sharpness, brightness, contrast, jpeg_quality,
  brisque, clip_iqa``) + text metrics per text kind ``cap_`` (training caption), ``gram_`` (grammar caption),
  ``alt_`` (source alt-text): ``words, sentences, wps`` (words of each sentence, list), ``flesch`` +
  ``rewritten, n_captions, perplexity``. A row with an ``excluded_reason`` (unreadable or missing face
  image, empty caption) is kept for the record and left out of every statistic.
* ``ngrams``, ``results/quality/<shard>.ngrams.npz``: per text kind, n = 1..4 and share bucket, the sorted unique 64-bit
  n-gram hashes and n-gram totals, which the report merges into exact-or-HyperLogLog counts (see
  ``facecaption.core.sketch``). ``share_bucket`` = hash(key) mod ``quality.share_steps``: a face belongs
  to the first k buckets' "k/steps share of the data" independently of shard order.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pandas as pd
from tqdm import tqdm

from facecaption.core.config import StageConfig
from facecaption.core.shards import atomic_path, iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO
from facecaption.quality import image as qimg
from facecaption.quality import text as qtext

log = logging.getLogger(__name__)

TEXT_KINDS = {"cap": "caption", "gram": "grammar", "alt": "alt-text", "llm": "LLM rewrite"}
IMAGE_METRICS = ("width", "height", "sharpness", "brightness", "contrast", "jpeg_quality", "brisque", "clip_iqa")


def share_bucket(key: str, steps: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % steps


def _str(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v)


def _load_captions(path: str) -> pd.DataFrame:
    try:
        df = read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a missing/corrupt table: every face is then "no caption row"
        log.warning("cannot read %s: %s", path, exc)
        df = pd.DataFrame()
    for col, default in (("key", ""), ("image_key", None), ("caption", ""), ("grammar_caption", None),
                         ("rewritten", False), ("alt_text", None), ("captions", None)):
        if col not in df.columns:
            df[col] = default
    return df


def _alt_texts(captions: pd.DataFrame, collect_parquet: str) -> pd.Series:
    """The source alt-text per face: the captions table's ``alt_text``, else the collect caption of its image."""
    alt = captions["alt_text"].map(_str)
    try:
        src = read_parquet(collect_parquet, columns=["key", "caption"]).drop_duplicates("key").set_index("key")["caption"]
        by_image = captions["image_key"].map(src).map(_str)
        alt = alt.where(alt != "", by_image)
    except Exception as exc:  # noqa: BLE001
        log.warning("no source alt-texts from %s: %s", collect_parquet, exc)
    return alt


def _degrade(captions: pd.DataFrame, truth_parquet: str) -> pd.Series:
    try:
        truth = read_parquet(truth_parquet)
    except Exception:  # noqa: BLE001 - real sources have no (or an empty) truth table
        truth = pd.DataFrame()
    if not len(truth) or "degrade" not in truth.columns:
        return pd.Series([None] * len(captions), index=captions.index, dtype=object)
    return captions["image_key"].map(truth.drop_duplicates("key").set_index("key")["degrade"])


def measure_shard(cfg: dict, shard: str, *, pairs: str, captions: str, records: str, truth: str,
                  out_quality: str, out_ngrams: str) -> pd.DataFrame:
    """Measure one shard: ``pairs``/``captions`` (its caption tar and parquet), ``records``/``truth`` (its
    collect parquet and truth parquet) → ``out_quality`` (parquet) and ``out_ngrams`` (npz)."""
    q = cfg["quality"]
    tar, cap_pq, col_pq, truth_pq = pairs, captions, records, truth

    captions = _load_captions(cap_pq)
    captions = captions.drop_duplicates("key").reset_index(drop=True)
    captions["alt"] = _alt_texts(captions, col_pq)
    captions["degrade"] = _degrade(captions, truth_pq) if truth_pq else None
    by_key = {k: i for i, k in enumerate(captions["key"])}

    brisque = qimg.Brisque() if q["brisque"] else None
    clip = None
    if q["clip"]["weights"]:
        c = q["clip"]
        clip = qimg.ClipScorer(c["weights"], c["arch"], c["model_config"], c["batch"])

    image_rows: dict[str, dict] = {}
    reasons: dict[str, list[str]] = {}
    pil_for_clip: dict[str, object] = {}
    errors: list[dict] = []
    for sample in tqdm(iter_samples(tar, errors), desc=f"quality {shard}", unit="face", mininterval=5):
        key = sample["__key__"]
        data = sample.get("jpg") or sample.get("jpeg") or sample.get("png")
        if data is None:
            reasons.setdefault(key, []).append("missing_image")
            continue
        try:
            image_rows[key] = qimg.image_row(data, brisque)
        except Exception as exc:  # noqa: BLE001 - any decode failure is recorded, not fatal
            reasons.setdefault(key, []).append(f"unreadable_image: {type(exc).__name__}")
            continue
        if clip is not None:
            from PIL import Image

            pil_for_clip[key] = Image.open(io.BytesIO(data)).convert("RGB")
        if key not in by_key:
            reasons.setdefault(key, []).append("no_caption_row")
    for err in errors:
        log.warning("captions tar %s: %s", tar, err)

    keys = list(captions["key"]) + sorted(k for k in set(image_rows) | set(reasons) if k not in by_key)
    extra = pd.DataFrame({"key": keys[len(captions):]})
    table = pd.concat([captions, extra], ignore_index=True) if len(extra) else captions
    for key in captions["key"]:
        if key not in image_rows and "unreadable" not in " ".join(reasons.get(key, [])):
            reasons.setdefault(key, []).append("missing_image")
    caption_text = table["caption"].map(_str)
    for key, text in zip(table["key"], caption_text):
        if not qtext.words(text):
            reasons.setdefault(key, []).append("empty_caption")

    out = pd.DataFrame({"key": table["key"].astype(str), "image_key": table["image_key"].map(lambda v: _str(v) or None)})
    out["share_bucket"] = [share_bucket(k, q["share_steps"]) for k in out["key"]]
    out["degrade"] = table["degrade"].map(lambda v: _str(v) or None) if "degrade" in table else None
    out["excluded_reason"] = [("; ".join(dict.fromkeys(reasons[k])) if k in reasons else None) for k in out["key"]]
    for m in IMAGE_METRICS:
        out[m] = [image_rows.get(k, {}).get(m, np.nan) for k in out["key"]]
    out["jpeg_quality"] = out["jpeg_quality"].astype(float)
    if clip is not None and pil_for_clip:
        ks = list(pil_for_clip)
        scores = dict(zip(ks, clip.clip_iqa([pil_for_clip[k] for k in ks])))
        out["clip_iqa"] = [float(scores.get(k, np.nan)) for k in out["key"]]

    rewritten = table["rewritten"].fillna(False).astype(bool)
    grammar = table["grammar_caption"].map(_str)
    texts = {"cap": caption_text, "gram": grammar, "alt": table["alt"].map(_str) if "alt" in table else grammar * 0}
    for prefix, series in texts.items():
        rows = [qtext.text_row(t) if t else {"words": 0, "sentences": 0, "words_per_sentence": [], "flesch": np.nan}
                for t in series]
        out[f"{prefix}_words"] = np.array([r["words"] for r in rows], dtype=np.int32)
        out[f"{prefix}_sentences"] = np.array([r["sentences"] for r in rows], dtype=np.int32)
        out[f"{prefix}_wps"] = [np.asarray(r["words_per_sentence"], dtype=np.int32) for r in rows]
        out[f"{prefix}_flesch"] = np.array([r["flesch"] for r in rows], dtype=np.float64)
    out["rewritten"] = rewritten.to_numpy()
    out["n_captions"] = [len(c) if isinstance(c, (list, np.ndarray)) else 1 for c in table["captions"]]
    out["perplexity"] = np.nan
    if q["language_model"]:
        ok = out["excluded_reason"].isna()
        out.loc[ok, "perplexity"] = qtext.perplexity(list(caption_text[ok]), q["language_model"])

    write_ngrams(out, texts, rewritten, q["share_steps"], out_ngrams)
    write_parquet(out, out_quality)
    n_ex = int(out["excluded_reason"].notna().sum())
    log.info("quality %s: %d faces, %d excluded", shard, len(out), n_ex)
    return out


def write_ngrams(out: pd.DataFrame, texts: dict, rewritten: pd.Series, steps: int, path: str) -> None:
    """Per text kind (cap, gram, alt, llm = rewritten captions), n and share bucket: unique n-gram hashes."""
    ok = out["excluded_reason"].isna().to_numpy()
    kinds = {"cap": (texts["cap"], ok), "gram": (texts["gram"], ok), "alt": (texts["alt"], ok),
             "llm": (texts["cap"], ok & rewritten.to_numpy())}
    buckets = out["share_bucket"].to_numpy()
    arrays: dict[str, np.ndarray] = {}
    totals = np.zeros((len(kinds), len(qtext.NGRAM_N), steps), dtype=np.int64)
    for i, (kind, (series, mask)) in enumerate(kinds.items()):
        idx = np.flatnonzero(mask)
        texts_k = [series.iloc[j] for j in idx]
        for j, n in enumerate(qtext.NGRAM_N):
            hashes, owner = qtext.ngram_hashes(texts_k, n)
            b = buckets[idx][owner] if len(owner) else np.zeros(0, dtype=np.int64)
            for s in range(steps):
                sel = hashes[b == s]
                totals[i, j, s] = len(sel)
                arrays[f"{kind}_{n}_{s}"] = np.unique(sel)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, kinds=np.array(list(kinds)), n=np.array(qtext.NGRAM_N), totals=totals, **arrays)


def run(cfg: StageConfig, io: StageIO) -> int:
    measure_shard(cfg, io.shard, pairs=io.one("pairs"), captions=io.one("captions"), records=io.one("records"),
                  truth=io.one("truth"), out_quality=io.outputs["quality"], out_ngrams=io.outputs["ngrams"])
    return 0
