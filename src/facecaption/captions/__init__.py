"""Captions: grammar captions from each kept face's attribute labels (+ an optional LLM rewrite), written as
training shards.

* ``results/captions/<shard>.tar``: ``<fkey>.jpg`` (aligned crop), ``<fkey>.txt`` (the caption: the LLM
  rewrite when one came back, else the first grammar caption), ``<fkey>.json`` with ``texts``: every text the
  face has, by field (``grammar``: the ``per_face`` grammar captions; ``rewritten``, ``released``: the
  FaceCaption-15M release's face caption, ``alt_text``: the image's web alt-text — each a list of zero or one),
  from which training picks ``train.text``;
* ``results/captions/<shard>.parquet``: per kept face ``key, image_key, face, caption, captions (list),
  grammar_caption, rewritten, rewrite_error, alt_text, released_caption, n_labels, stated (list of
  "Attr=0|1")`` — plain columns, loadable with ``datasets.load_dataset("parquet", ...)``.

Sampling is seeded per face (``rng.stream(seed, "captions/grammar", key)``): the same face gets the same
captions whatever the order or the shard it is in.
"""

from __future__ import annotations

import functools
import logging
import random

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from facecaption.core import rng as rngmod
from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.config import StageConfig
from facecaption.core.reasons import plain as _plain
from facecaption.core.shards import ShardWriter, iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

ATTR_META = ("key", "n_labels", "kept", "reason")
FALLBACK = "A close-up photo of a face."


class CaptionInputError(ValueError):
    """An attributes table that cannot be captioned; the message names the file and the column."""


def label_columns(df: pd.DataFrame, path: str) -> list[str]:
    """The attribute label columns of an attributes parquet, checked: unknown, empty or bad columns are errors."""
    for col in ("key", "kept", "n_labels"):
        if col not in df.columns:
            raise CaptionInputError(f"{path}: missing column {col!r}")
    attrs = []
    for col in df.columns:
        if col in ATTR_META:
            continue
        name = col[2:] if col.startswith("p_") else col
        if name not in ATTRIBUTES:
            raise CaptionInputError(f"{path}: unknown attribute column {col!r}; known: the 40 CelebA names "
                                    "(facecaption.core.celeba.ATTRIBUTES), as <Attr> and p_<Attr>")
        if col.startswith("p_"):
            continue
        values = df[col]
        if len(df) and values.isna().all():
            raise CaptionInputError(f"{path}: attribute column {col!r} is empty (all null)")
        bad = values[values.notna() & ~values.isin([-1, 0, 1])]
        if len(bad):
            raise CaptionInputError(f"{path}: attribute column {col!r} holds {_plain(bad.iloc[0])!r}; expected 1, 0 or -1")
        attrs.append(col)
    return [a for a in ATTRIBUTES if a in attrs]


@functools.lru_cache(maxsize=16)
def _base(seed: int) -> int:
    return int(rngmod.stream(seed, "captions/grammar").integers(0, 2**63))


def face_rng(seed: int, key: str) -> random.Random:
    """A fast per-face generator, keyed by (seed, purpose, face key) and never by order: the base comes from
    the project's keyed streams; ``random.Random`` seeds a string through SHA-512 (stable across runs)."""
    return random.Random(f"{_base(seed)}:{key}")


def caption_faces(gen, seed: int, keys: list[str], labels: np.ndarray, attrs: list[str], per_face: int):
    """Yield (captions, stated) per face; ``labels`` is N×A int (1/0/-1, NaN read as -1)."""
    for key, row in zip(keys, labels):
        lab = dict(zip(attrs, row.tolist()))
        rnd = face_rng(seed, key)
        caps, stated = [], []
        for _ in range(per_face):
            text, st = gen.caption(lab, rnd)
            caps.append(text or FALLBACK)
            stated.append(st)
        yield caps, stated


def _text(row: pd.Series, column: str) -> str | None:
    """A text column of the merged faces row: None when absent, null or blank."""
    value = row.get(column)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value) if str(value).strip() else None


def run(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.captions.grammar import Generator, Grammar

    ccfg, seed, shard = cfg["captions"], cfg["seed"], io.shard
    faces_tar, faces_parquet, attrs_parquet = io.one("crops"), io.one("faces"), io.one("attributes")
    out_tar, out_parquet = io.outputs["pairs"], io.outputs["captions"]
    # captions.grammar, when set, is an input ("grammar"); unset: the grammar shipped in the package
    grammar = Grammar.load(io.many("grammar")[0] if "grammar" in io.inputs else None)
    gen = Generator(grammar)

    attrs_df = read_parquet(attrs_parquet)
    attrs = label_columns(attrs_df, attrs_parquet)
    faces = read_parquet(faces_parquet)
    meta_cols = [c for c in ("key", "image_key", "face", "alt_text", "released_caption") if c in faces.columns]
    df = attrs_df[attrs_df["kept"].astype(bool)].merge(faces[meta_cols], on="key", how="left")
    dropped = int((~attrs_df["kept"].astype(bool)).sum())
    log.info("captions %s: %d kept faces to caption (%d not kept, see %s: reason)", shard, len(df), dropped,
             attrs_parquet)
    keys = df["key"].astype(str).tolist()
    labels = df[attrs].fillna(-1).to_numpy(dtype=np.int8) if attrs else np.zeros((len(df), 0), np.int8)
    results = list(tqdm(caption_faces(gen, seed, keys, labels, attrs, ccfg["per_face"]), total=len(keys),
                        desc=f"captions {shard}", mininterval=5))
    grammar_caption = [caps[0] for caps, _ in results]
    rewritten = [None] * len(keys)
    errors: list = [None] * len(keys)
    if ccfg["llm"]["enabled"] and keys:
        from facecaption.captions.llm import Rewriter

        rewriter = Rewriter(ccfg["llm"], shard=shard)  # reads only this shard's cache file
        for i, (out, err) in enumerate(rewriter.rewrite(grammar_caption)):
            rewritten[i], errors[i] = out, err
    by_key = {k: i for i, k in enumerate(keys)}

    rows = []
    with ShardWriter(out_tar) as writer:
        seen = set()
        for sample in iter_samples(faces_tar):
            key = sample["__key__"]
            i = by_key.get(key)
            if i is None or key in seen or "jpg" not in sample:
                continue
            seen.add(key)
            caps, stated = results[i]
            caption = rewritten[i] or caps[0]
            r = df.iloc[i]
            row = {
                "key": key,
                "image_key": str(r["image_key"]) if "image_key" in df.columns and pd.notna(r["image_key"]) else key.rsplit("_", 1)[0],
                "face": int(r["face"]) if "face" in df.columns and pd.notna(r["face"]) else int(key.rsplit("_", 1)[-1]),
                "caption": caption, "captions": caps, "grammar_caption": caps[0],
                "rewritten": rewritten[i] is not None, "rewrite_error": errors[i],
                "alt_text": _text(r, "alt_text"), "released_caption": _text(r, "released_caption"),
                "n_labels": int(r["n_labels"]),
                "stated": sorted({f"{a}={v}" for st in stated for a, v in st}),
            }
            texts = {"grammar": caps, "rewritten": [rewritten[i]] if rewritten[i] else [],
                     "released": [row["released_caption"]] if row["released_caption"] else [],
                     "alt_text": [row["alt_text"]] if row["alt_text"] else []}
            writer.write({"__key__": key, "jpg": sample["jpg"], "txt": caption,
                          "json": {**{k: row[k] for k in ("key", "image_key", "face", "captions", "grammar_caption",
                                                          "rewritten", "n_labels")}, "texts": texts}})
            rows.append(row)
    missing = [k for k in keys if k not in seen]
    if missing:
        log.warning("captions %s: %d kept faces have no crop in %s (first: %s)", shard, len(missing), faces_tar,
                    missing[0])
    schema = pa.schema([("key", pa.string()), ("image_key", pa.string()), ("face", pa.int32()),
                        ("caption", pa.string()), ("captions", pa.list_(pa.string())),
                        ("grammar_caption", pa.string()), ("rewritten", pa.bool_()), ("rewrite_error", pa.string()),
                        ("alt_text", pa.string()), ("released_caption", pa.string()), ("n_labels", pa.int32()),
                        ("stated", pa.list_(pa.string()))])
    write_parquet(pa.Table.from_pylist(rows, schema=schema), out_parquet)
    n_rw = sum(r["rewritten"] for r in rows)
    log.info("captions %s: %d faces captioned (%d rewritten by the LLM, %d rewrite failures)", shard, len(rows),
             n_rw, sum(r["rewrite_error"] is not None for r in rows))
    return 0
