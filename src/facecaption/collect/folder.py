"""The folder source: any folder tree of images (CelebA, FFHQ, a lab's own photos) packed into collect shards.

Images are the files under ``folder.root`` matching ``folder.patterns`` (case-insensitive globs, ``**/``
= any depth) and no ``folder.exclude`` pattern, sorted by their relative path (POSIX form), so the order —
and therefore every shard — is the same on every machine. Shard ``i`` holds images ``[i*per_shard,
(i+1)*per_shard)``; keys are ``<shard>_<index in shard>``. Symbolic links to folders are not followed.

An optional CSV (``folder.csv``) adds a caption and any attribute columns; its ``key_column`` names the image
by relative path, file name or file name without extension (the latter two only where unique). JPEG files
are kept byte for byte (unless ``reencode`` or an EXIF rotation), other formats become JPEG (any mode, 16-bit
and float gray or alpha included, through :func:`facecaption.core.imageio.to_rgb`). Unreadable files,
files over ``max_bytes`` and images over ``max_pixels`` get a status row and stay out of the tar.
The sample URL is ``folder://<relative path>`` (opt-out entries can name single files that way).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import pandas as pd

from facecaption.collect.common import clean_message, empty_truth, error_message, jsonable
from facecaption.core.config import SourceError, StageConfig, require_path
from facecaption.core.optout import OptOut
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

SOURCE = "folder"
OUTPUT_COLUMNS = ("key", "url", "width", "height", "source", "caption", "status", "error_message", "downloaded",
                  "path")


@lru_cache(maxsize=64)
def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over POSIX relative paths: ``**/`` any depth (also none), ``*`` and ``?`` within one
    path component, ``[...]`` a character class; case-insensitive."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1:j]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body)) + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE)


def list_images(fcfg: dict) -> list[str]:
    """Relative POSIX paths of the images, sorted."""
    root = require_path(fcfg.get("root"), "folder.root", "folder")
    if not root.is_dir():
        raise SourceError(f"config error: folder.root: {root} is not a folder")
    include = [glob_regex(p) for p in fcfg["patterns"]]
    exclude = [glob_regex(p) for p in fcfg.get("exclude") or []]
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if any(r.match(rel) for r in include) and not any(r.match(rel) for r in exclude):
                found.append(rel)
    return sorted(found)


def count_images(fcfg: dict) -> int:
    return len(list_images(fcfg))


def plan(cfg: dict) -> int:
    """The number of collect shards: the images over ``folder.per_shard``, at least one."""
    return max(math.ceil(count_images(cfg["folder"]) / cfg["folder"]["per_shard"]), 1)


def read_captions(fcfg: dict, images: list[str]) -> tuple[dict[str, dict], list[str]]:
    """Map image relative path -> CSV row (caption + attribute columns); and the attribute column names."""
    if not fcfg.get("csv"):
        return {}, []
    path = require_path(fcfg["csv"], "folder.csv")
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    key_col, cap_col = fcfg["key_column"], fcfg.get("caption_column")
    try:
        df = pd.read_csv(path, sep=sep, dtype={key_col: str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise SourceError(f"config error: folder.csv: {path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if key_col not in df.columns:
        raise SourceError(f"config error: folder.key_column: column {key_col!r} is not in {path}; "
                          f"columns: {', '.join(map(str, df.columns[:20]))}")
    if cap_col and cap_col not in df.columns:
        raise SourceError(f"config error: folder.caption_column: column {cap_col!r} is not in {path}")
    wanted = fcfg["attribute_columns"]
    attrs = [c for c in df.columns if c not in (key_col, cap_col)] if wanted == "all" else list(wanted)
    missing = [c for c in attrs if c not in df.columns]
    if missing:
        raise SourceError(f"config error: folder.attribute_columns: column {missing[0]!r} is not in {path}")
    rename = {c: (f"src_{c}" if c in OUTPUT_COLUMNS else c) for c in attrs}
    names = [Path(p).name for p in images]
    stems = [Path(p).stem for p in images]
    n_names, n_stems = Counter(names), Counter(stems)
    by_name = {n: p for n, p in zip(names, images) if n_names[n] == 1}  # only where unique
    by_stem = {s: p for s, p in zip(stems, images) if n_stems[s] == 1}
    paths = set(images)
    out: dict[str, dict] = {}
    for rec in df.to_dict("records"):
        k = str(rec[key_col]).strip().replace("\\", "/").removeprefix("./") if isinstance(rec[key_col], str) else ""
        p = k if k in paths else by_name.get(k) or by_stem.get(k)
        if p is None or p in out:
            continue
        cap = rec.get(cap_col) if cap_col else None
        out[p] = {"caption": cap if isinstance(cap, str) else "", **{rename[c]: rec[c] for c in attrs}}
    log.info("folder.csv: %d of %d images have a row", len(out), len(images))
    return out, [rename[c] for c in attrs]


def load_image(path: Path, fcfg: dict) -> tuple[bytes | None, int | None, int | None, str, str | None]:
    """(jpeg bytes, width, height, status, error) for one file."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    from facecaption.core.shards import encode_jpeg  # noqa: PLC0415

    size = path.stat().st_size
    if size > fcfg["max_bytes"]:
        return None, None, None, "too_large", f"{size} bytes over max_bytes ({fcfg['max_bytes']})"
    data = path.read_bytes()
    try:
        with Image.open(BytesIO(data)) as im:
            w, h = im.size
            if w * h > fcfg["max_pixels"]:
                return None, None, None, "too_many_pixels", f"{w}x{h} over max_pixels ({fcfg['max_pixels']})"
            im.load()
            rotated = im.getexif().get(0x0112, 1) not in (0, 1)
            if im.format == "JPEG" and im.mode in ("RGB", "L") and not fcfg["reencode"] and not rotated:
                return data, w, h, "success", None
            import numpy as np  # noqa: PLC0415

            from facecaption.core.imageio import to_rgb  # noqa: PLC0415

            rgb = to_rgb(ImageOps.exif_transpose(im))  # 16-bit/float gray scaled, alpha on white: picture kept
            return encode_jpeg(np.asarray(rgb), quality=95), rgb.width, rgb.height, "success", None
    except Image.DecompressionBombError as exc:
        return None, None, None, "too_many_pixels", clean_message(str(exc))
    except Exception as exc:  # noqa: BLE001 (any decoder error: not an image)
        return None, None, None, "decode_error", error_message(exc)  # no memory address: same bytes every run


def collect_shard(cfg: StageConfig, io: StageIO) -> None:
    """Pack shard ``io.shard``'s images into the outputs ``images`` (tar) and ``records``; ``truth`` is empty."""
    from facecaption.core.shards import ShardWriter, write_parquet  # noqa: PLC0415

    fcfg, shard = cfg["folder"], io.shard
    tar_path, parquet_path, truth_path = io.outputs["images"], io.outputs["records"], io.outputs["truth"]
    images = list_images(fcfg)
    per = fcfg["per_shard"]
    lo = int(shard) * per
    mine = images[lo:lo + per]
    extra, attrs = read_captions(fcfg, images)
    optout = OptOut.from_config(cfg["optout"])
    root = Path(str(fcfg["root"])).expanduser()
    rows = []
    with ShardWriter(tar_path) as writer:
        for idx, rel in enumerate(mine):
            key = f"{shard}_{idx:05d}"
            url = f"folder://{rel}"
            info = extra.get(rel, {})
            caption = info.get("caption", "")
            kept = {c: info.get(c) for c in attrs}
            if optout.blocks(url):
                jpg, w, h, status, err = None, None, None, "opted_out", "in the opt-out list"
            else:
                jpg, w, h, status, err = load_image(root / rel, fcfg)
            row = {"key": key, "url": url, "width": w, "height": h, "source": SOURCE, "caption": caption,
                   "status": status, "error_message": err, "downloaded": status != "opted_out", "path": rel, **kept}
            if jpg is not None:
                writer.write({"__key__": key, "jpg": jpg, "txt": caption,
                              "json": {"key": key, "url": url, "width": w, "height": h, "source": SOURCE,
                                       **{c: jsonable(v) for c, v in kept.items()}}})
            rows.append(row)
    table = pd.DataFrame(rows, columns=[*OUTPUT_COLUMNS, *attrs])
    for col in ("width", "height"):
        table[col] = table[col].astype("Int64")
    table["downloaded"] = table["downloaded"].astype(bool)
    write_parquet(table, parquet_path)
    write_parquet(empty_truth(), truth_path)
    log.info("shard %s: %d files, %d written; %s", shard, len(table), int((table.status == "success").sum()),
             table["status"].value_counts().to_dict())
