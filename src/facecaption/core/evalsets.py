"""The evaluation sets: attribute-labeled splits for the probe and held-out captioned faces for retrieval.

* ``results/labeled/{train,val,test}``: the pipeline's labeled set (synthface identities or CelebA);
* folders in their published formats, named in ``evaluate.datasets``: CelebA (``img_align_celeba/``,
  ``list_attr_celeba.txt``, ``list_eval_partition.txt``), LFWA (the same layout for LFW: an attribute list
  with -1/1 values and a partition file; a partition without a validation split gets one carved from the
  training identities, never from the test split) and any folder with an attribute CSV. With ``landmarks``
  (CelebA's landmark format) every image is aligned with the faces stage's function and template
  (``align.size``, ``align.scale``), the framing the labeled set and the crawled faces have; without, the
  middle square of each image is used.

Splits must not overlap (:func:`check_disjoint`): not by sample key, not by image content (a hash of the
decoded pixels) and not by identity where identities are known (the synthface identities of the labeled
set, CelebA's ``identity_CelebA.txt``, LFWA's person names, a CSV's ``identity`` column); an overlap stops
the evaluation with one line naming the dataset, the two splits and how many items they share.

Problems stop with :class:`EvaluateInputError`, one line naming the file (and line). Before any job runs,
:func:`check_datasets` stops a config whose dataset names clash or whose folders or files are missing, with
a :class:`~facecaption.core.config.ConfigError` naming the key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facecaption.core import rng as rngmod
from facecaption.core.celeba_files import CelebAFormatError, read_attributes, read_landmarks
from facecaption.core.config import ConfigError
from facecaption.core.shards import encode_jpeg, iter_samples, leaves_folder, read_parquet

SPLITS = ("train", "val", "test")
SPLIT_CODE = {"0": "train", "1": "val", "2": "test"}
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class EvaluateInputError(ValueError):
    """Bad evaluation input; the message names the file (and line)."""


@dataclass
class Split:
    keys: list[str]
    sources: list  # per sample: JPEG bytes, a path, or (path, "square")
    labels: np.ndarray  # (n, attributes) uint8 0/1
    identities: list = field(default_factory=list)  # group ids ("" = unknown)


@dataclass
class LabeledSet:
    name: str
    attributes: list[str]
    splits: dict[str, Split]
    note: str = ""
    overlap: dict = field(default_factory=dict)  # what check_disjoint checked and found (all zero, else it raised)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.splits[s].keys) for s in SPLITS}


UNKNOWN_IDENTITY = ("", -1, None)
PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


def content_hash(source) -> str:
    """sha256 of a sample's decoded pixels (mode, size, bytes): the same picture under two keys or in two
    files hashes the same; a source that does not decode is hashed as its bytes (or path)."""
    from PIL import Image

    try:
        if isinstance(source, (bytes, bytearray)):
            im = Image.open(io.BytesIO(source))
        else:
            im = Image.open(source[0] if isinstance(source, tuple) else source)
        with im:
            im = im.convert("RGB")
            return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - not an image: its bytes identify it
        raw = bytes(source) if isinstance(source, (bytes, bytearray)) else repr(source).encode()
        return hashlib.sha256(b"raw:" + raw).hexdigest()


def check_disjoint(ds: LabeledSet) -> dict[str, int]:
    """Stop (one line: the dataset, the two splits, how many they share) if two splits share a sample key, an
    image (:func:`content_hash` of the pixels) or a known identity; return the overlap counts per split pair
    (all 0). What was checked (images hashed, samples with a known identity) goes to ``ds.overlap``."""
    hashes = {s: [content_hash(x) for x in ds.splits[s].sources] for s in SPLITS}
    known = {s: [i for i in ds.splits[s].identities if i not in UNKNOWN_IDENTITY] for s in SPLITS}
    detail = {}
    for a, b in PAIRS:
        sa, sb = ds.splits[a], ds.splits[b]
        keys = set(sa.keys) & set(sb.keys)
        if keys:
            raise EvaluateInputError(f"{ds.name}: splits {a} and {b} share {len(keys)} image key(s) (e.g. "
                                     f"{sorted(keys)[0]!r})")
        first = {h: k for k, h in zip(sa.keys, hashes[a])}
        same = [(first[h], k) for k, h in zip(sb.keys, hashes[b]) if h in first]
        if same:
            raise EvaluateInputError(f"{ds.name}: splits {a} and {b} share {len(same)} image(s) with identical pixels "
                                     f"(e.g. {same[0][0]!r} in {a}, {same[0][1]!r} in {b})")
        ids = set(known[a]) & set(known[b])
        if ids:
            raise EvaluateInputError(f"{ds.name}: splits {a} and {b} share {len(ids)} identit"
                                     f"{'y' if len(ids) == 1 else 'ies'} (e.g. {sorted(ids, key=str)[0]!r})")
        detail[f"{a}_{b}"] = {"keys": 0, "images": 0, "identities": 0 if known[a] and known[b] else None}
    ds.overlap = {"pairs": detail, "images_hashed": sum(len(h) for h in hashes.values()),
                  "identities_known": sum(len(k) for k in known.values()),
                  "samples": sum(len(ds.splits[s].keys) for s in SPLITS)}
    return {pair: 0 for pair in detail}


# -- the pipeline's labeled set ------------------------------------------------------------------------
def read_labeled(files: dict[str, tuple[str, str]], name: str | None = None) -> LabeledSet:
    """The labeled stage's splits, ``files[split] = (images tar, labels parquet)`` for train, val and test
    (attribute columns are everything but key/split/identity)."""
    splits, attributes, celeba_like = {}, None, True
    for split in SPLITS:
        tar, pq = files[split]
        for f in (tar, pq):
            if not Path(f).exists():
                raise EvaluateInputError(f"{f}: missing; run the labeled stage first")
        df = read_parquet(pq)
        cols = [c for c in df.columns if c not in ("key", "split", "identity")]
        if attributes is None:
            attributes = cols
        elif cols != attributes:
            raise EvaluateInputError(f"{pq}: attribute columns differ from the train split's")
        errors: list = []
        images = {s["__key__"]: s["jpg"] for s in iter_samples(tar, errors) if "jpg" in s}
        if errors:
            raise EvaluateInputError(f"{tar}: {errors[0]['reason']}")
        missing = [k for k in df["key"] if k not in images]
        if missing:
            raise EvaluateInputError(f"{pq}: key {missing[0]!r} has no image in {tar}")
        bad = ~df[cols].isin([0, 1]).all(axis=1)
        if bad.any():
            raise EvaluateInputError(f"{pq}: row {int(np.argmax(bad.to_numpy()))}: attribute values must be 0/1")
        ids = df["identity"].tolist() if "identity" in df else [""] * len(df)
        celeba_like &= all(i == -1 for i in ids)
        splits[split] = Split(df["key"].tolist(), [images[k] for k in df["key"]],
                              df[cols].to_numpy(dtype=np.uint8), ids)
    name = name or ("CelebA" if celeba_like else "synthface")
    return LabeledSet(name, attributes, splits)


def labeled_set_name(config: dict) -> str:
    """The labeled set's name in tables, from the config: ``evaluate.labeled_name``, else what
    :func:`read_labeled` guesses for that ``labeled.source`` (CelebA or synthface)."""
    given = (config.get("evaluate") or {}).get("labeled_name")
    return given or ("CelebA" if (config.get("labeled") or {}).get("source") == "celeba" else "synthface")


# -- folders in published formats ----------------------------------------------------------------------
def _line_of(path: Path, name: str) -> int:
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if parts and parts[0] == name:
            return no
    return 0


def _read_partition(path: Path) -> dict[str, str]:
    if not path.exists():
        raise EvaluateInputError(f"{path}: missing partition file")
    out = {}
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in SPLIT_CODE:
            raise EvaluateInputError(f"{path}:{no}: expected 'image 0|1|2' (train|val|test), found {line.strip()!r}")
        out[parts[0]] = SPLIT_CODE[parts[1]]
    return out


CELEBA_IDENTITIES = "identity_CelebA.txt"


def _read_identities(path: Path) -> dict[str, str]:
    """CelebA's ``identity_CelebA.txt``: ``image identity`` per line."""
    if not path.exists():
        raise EvaluateInputError(f"{path}: missing identity file")
    out = {}
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise EvaluateInputError(f"{path}:{no}: expected 'image identity', found {line.strip()!r}")
        out[parts[0]] = parts[1]
    return out


def _person(name: str) -> str:
    """LFW file names are ``First_Last_0001.jpg``: the identity is the name without the number."""
    stem = Path(name).stem
    return re.sub(r"_\d+$", "", stem)


def _carve_val(names: list[str], identity: dict[str, str], share: float, seed: int, dsname: str) -> set[str]:
    """Training identities (whole ones) moved to validation."""
    people = sorted({identity[n] for n in names})
    rng = rngmod.stream(seed, "evaluate/val_identities", dsname)
    take = set(rng.choice(people, size=max(1, round(share * len(people))), replace=False).tolist())
    return {n for n in names if identity[n] in take}


def _find_image(folder: Path, name: str) -> Path | None:
    p = folder / name
    if p.exists():
        return p
    q = folder / _person(name) / Path(name).name  # LFW's per-person folders
    return q if q.exists() else None


FOLDER_DEFAULTS = {"celeba": ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"),
                   "lfwa": ("lfw", "list_attr_lfw.txt", "list_eval_partition_lfw.txt"),
                   "csv": (".", "attributes.csv", None)}


def _align_params(align: dict | None) -> tuple[int, float]:
    """(size, scale) of ``align`` (the config section), or the schema's defaults."""
    if align is None:
        from facecaption.core.config import schema

        props = schema()["properties"]["align"]["properties"]
        align = {k: v["default"] for k, v in props.items()}
    return int(align["size"]), float(align["scale"])


def _aligned_jpeg(path: Path, points: np.ndarray, size: int, scale: float) -> bytes:
    """The image aligned with the faces stage's function and template, as the labeled set stores it."""
    from PIL import Image

    from facecaption.core.align import align as align_face

    with Image.open(path) as im:
        crop, _ = align_face(np.asarray(im.convert("RGB")), points, size, scale)
    return encode_jpeg(crop)


def read_attribute_folder(spec: dict, seed: int = 0, align: dict | None = None,
                          errors: list | None = None) -> LabeledSet:
    """A CelebA- or LFWA-format folder (attribute list with -1/1 values + partition file, optional landmark
    list). ``align``: the config's ``align`` section (size, scale) for datasets with landmarks. ``errors``: a
    list to record images that do not decode (``{"key", "split", "reason"}``) and leave out, instead of
    stopping (the audit stage; evaluation passes none and stops)."""
    fmt = spec["format"]
    root = Path(spec["path"])
    defaults = FOLDER_DEFAULTS[fmt]
    images = root / (spec.get("images") or defaults[0])
    attr_path = root / (spec.get("attributes") or defaults[1])
    part_path = root / (spec.get("partition") or defaults[2])
    if not root.is_dir():
        raise EvaluateInputError(f"{root}: dataset folder of {spec['name']!r} does not exist")
    if not attr_path.exists():
        raise EvaluateInputError(f"{attr_path}: missing attribute file of {spec['name']!r}")
    try:
        header, labels = read_attributes(attr_path)
    except CelebAFormatError as exc:
        raise EvaluateInputError(str(exc)) from None
    partition = _read_partition(part_path)
    for name in partition:
        if name not in labels:
            raise EvaluateInputError(f"{part_path}:{_line_of(part_path, name)}: {name} has no row in {attr_path.name}")
    for name in labels:
        if name not in partition:
            raise EvaluateInputError(f"{attr_path}:{_line_of(attr_path, name)}: {name} is not in {part_path.name}")
    if not images.is_dir():
        raise EvaluateInputError(f"{images}: missing image folder of {spec['name']!r}")
    points, lm_path = None, None
    if spec.get("landmarks"):
        lm_path = root / spec["landmarks"]
        if not lm_path.exists():
            raise EvaluateInputError(f"{lm_path}: missing landmark file of {spec['name']!r}")
        try:
            points = read_landmarks(lm_path)
        except CelebAFormatError as exc:
            raise EvaluateInputError(str(exc)) from None
    size, scale = _align_params(align)
    by_split = {s: sorted(n for n, v in partition.items() if v == s) for s in SPLITS}
    identity = {n: (_person(n) if fmt == "lfwa" else "") for n in partition}
    id_path = root / (spec.get("identities") or CELEBA_IDENTITIES)
    if fmt == "celeba" and (spec.get("identities") or id_path.exists()):
        known = _read_identities(id_path)
        identity.update({n: known[n] for n in partition if n in known})
    note = ""
    if not by_split["val"]:
        if fmt != "lfwa":
            raise EvaluateInputError(f"{part_path}: no validation images (code 1)")
        moved = _carve_val(by_split["train"], identity, spec.get("val_share", 0.1), seed, spec["name"])
        by_split["val"] = sorted(moved)
        by_split["train"] = [n for n in by_split["train"] if n not in moved]
        note = "validation identities carved from the training split"
    splits = {}
    for s in SPLITS:
        names = by_split[s][: spec["max_images"]] if spec.get("max_images") else by_split[s]
        sources = []
        for n in names:
            p = _find_image(images, n)
            if p is None:
                raise EvaluateInputError(f"{part_path}:{_line_of(part_path, n)}: image {n} is missing from {images}")
            if points is None:
                sources.append((str(p), "square"))
                continue
            if n not in points:
                raise EvaluateInputError(f"{lm_path}: image {n} (listed in {part_path.name}) has no landmarks")
            if errors is None:
                sources.append(_aligned_jpeg(p, points[n], size, scale))
                continue
            try:
                sources.append(_aligned_jpeg(p, points[n], size, scale))
            except Exception as exc:  # noqa: BLE001 - an unreadable image: recorded, left out
                errors.append({"key": Path(n).stem, "split": s, "reason": f"unreadable_image: {type(exc).__name__}"})
                sources.append(None)
        keep = [i for i, src in enumerate(sources) if src is not None]
        names, sources = [names[i] for i in keep], [sources[i] for i in keep]
        splits[s] = Split([Path(n).stem for n in names], sources,
                          np.array([labels[n] for n in names], dtype=np.uint8).reshape(len(names), len(header)),
                          [identity[n] for n in names])
    return LabeledSet(spec["name"], list(header), splits, note)


def read_csv_folder(spec: dict, seed: int = 0) -> LabeledSet:
    """A folder with an attribute CSV: ``image`` (path relative to the folder), optional ``split``
    (train/val/test) and ``identity``, then one column per attribute with values -1/1 or 0/1. Without a
    split column, identities (or images) are split 70/10/20 at random with the seed."""
    root = Path(spec["path"])
    path = root / (spec.get("attributes") or "attributes.csv")
    if not path.exists():
        raise EvaluateInputError(f"{path}: missing attribute file of {spec['name']!r}")
    images = root / (spec.get("images") or ".")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or "image" not in rows[0]:
        raise EvaluateInputError(f"{path}:1: the header needs an 'image' column")
    header = [h.strip() for h in rows[0]]
    meta = {"image", "split", "identity"}
    attrs = [h for h in header if h not in meta]
    if not attrs:
        raise EvaluateInputError(f"{path}:1: no attribute columns")
    recs = []
    for no, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise EvaluateInputError(f"{path}:{no}: expected {len(header)} fields, found {len(row)}")
        rec = dict(zip(header, (c.strip() for c in row)))
        vals = []
        for a in attrs:
            v = rec[a]
            if v not in ("-1", "0", "1"):
                raise EvaluateInputError(f"{path}:{no}: attribute {a} value {v!r} is not -1/1 (or 0/1)")
            vals.append(1 if v == "1" else 0)
        if "split" in rec and rec["split"] not in SPLITS:
            raise EvaluateInputError(f"{path}:{no}: split {rec['split']!r} is not train, val or test")
        if leaves_folder(rec["image"]):
            raise EvaluateInputError(f"{path}:{no}: image {rec['image']!r} leaves the dataset folder")
        img = images / rec["image"]
        if not img.exists():
            raise EvaluateInputError(f"{path}:{no}: image {rec['image']} is missing from {images}")
        recs.append((rec["image"], rec.get("identity", ""), rec.get("split"), vals, img))
    if not recs:
        raise EvaluateInputError(f"{path}: no rows")
    if "split" not in header:
        groups = sorted({r[1] or r[0] for r in recs})
        perm = rngmod.stream(seed, "evaluate/csv_split", spec["name"]).permutation(len(groups))
        cut1, cut2 = int(0.7 * len(groups)), int(0.8 * len(groups))
        split_of = {groups[i]: ("train" if j < cut1 else "val" if j < cut2 else "test") for j, i in enumerate(perm)}
        recs = [(a, b, split_of[b or a], d, e) for a, b, _, d, e in recs]
    splits = {}
    for s in SPLITS:
        chosen = [r for r in recs if r[2] == s]
        if spec.get("max_images"):
            chosen = chosen[: spec["max_images"]]
        if not chosen:
            raise EvaluateInputError(f"{path}: split {s} is empty")
        splits[s] = Split([r[0] for r in chosen], [str(r[4]) for r in chosen],
                          np.array([r[3] for r in chosen], dtype=np.uint8), [r[1] for r in chosen])
    return LabeledSet(spec["name"], attrs, splits)


def read_dataset(spec: dict, seed: int = 0, align: dict | None = None, errors: list | None = None) -> LabeledSet:
    """One ``evaluate.datasets`` entry. ``align``: the config's ``align`` section, used by datasets with
    ``landmarks`` (None: the schema's defaults); ``errors``: see :func:`read_attribute_folder`."""
    if spec["format"] == "csv":
        return read_csv_folder(spec, seed)
    return read_attribute_folder(spec, seed, align, errors)


# -- config checks before any job runs -----------------------------------------------------------------
_HOW_TO_GET = {
    "celeba": ("download CelebA (Aligned&Cropped images and the annotation files) from "
               "mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    "lfwa": "get LFWA (LFW images in lfw/ and the attribute and partition lists of Liu et al.'s LFWA release)",
    "csv": "put the images and the attribute CSV there",
}


def _how_to_get(fmt: str, folder: str) -> str:
    text = f"{_HOW_TO_GET[fmt]} into {folder}"
    if fmt in ("celeba", "lfwa"):
        text += f", or for a dry run write a synthetic stand-in: python -m facecaption.synthface.formats {fmt} {folder}"
    return text


def check_datasets(config: dict) -> None:
    """Stop a config that would fail in the labeled or evaluate stage for want of data, before any job runs:
    a missing CelebA folder for ``labeled.source: celeba``, clashing dataset names (the labeled set's
    included) and missing folders or files of ``evaluate.datasets``. Raises :class:`ConfigError` with one line
    naming the key. Only existence is checked here; the contents are read (and checked) by the stages."""
    lab = config.get("labeled") or {}
    if lab.get("source") == "celeba":
        how = _how_to_get("celeba", lab.get("celeba_dir") or "<folder>")
        if not lab.get("celeba_dir"):
            raise ConfigError(f"config error: labeled.celeba_dir: not set, but labeled.source is celeba; {how}, "
                              f"and set labeled.celeba_dir to it")
        root = Path(lab["celeba_dir"])
        if not root.is_dir():
            raise ConfigError(f"config error: labeled.celeba_dir: {root} does not exist; {how}")
        for part in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
            if not (root / part).exists():
                raise ConfigError(f"config error: labeled.celeba_dir: {root / part} does not exist; {how}")
        if lab.get("celeba_landmarks") and not (root / lab["celeba_landmarks"]).exists():
            raise ConfigError(f"config error: labeled.celeba_landmarks: {root / lab['celeba_landmarks']} does not "
                              f"exist; give CelebA's list_landmarks_align_celeba.txt, or remove the key")
    ev = config.get("evaluate") or {}
    seen = {labeled_set_name(config): "evaluate.labeled_name"}
    for i, spec in enumerate(ev.get("datasets") or []):
        key, fmt, name = f"evaluate.datasets[{i}]", spec["format"], spec["name"]
        if name in seen:
            other = seen[name]
            hint = ("set evaluate.labeled_name (e.g. \"CelebA (labeled)\") or rename this entry"
                    if other == "evaluate.labeled_name" else "rename one of them")
            raise ConfigError(f"config error: {key}.name: {name!r} is also the name of {other}"
                              f"{' (the labeled set)' if other == 'evaluate.labeled_name' else ''}; dataset names "
                              f"must be distinct in tables: {hint}")
        seen[name] = f"{key}.name"
        root = Path(spec["path"])
        if not root.is_dir():
            raise ConfigError(f"config error: {key}.path: {root} does not exist; {_how_to_get(fmt, spec['path'])}")
        if spec.get("landmarks") and fmt == "csv":
            raise ConfigError(f"config error: {key}.landmarks: only for the celeba and lfwa formats; remove it")
        images, attributes, partition = FOLDER_DEFAULTS[fmt]
        parts = [("images", spec.get("images") or images, "is_dir"),
                 ("attributes", spec.get("attributes") or attributes, "exists"),
                 ("partition", spec.get("partition") or partition, "exists"),
                 ("landmarks", spec.get("landmarks"), "exists"),
                 ("identities", spec.get("identities"), "exists")]
        for field_name, rel, test in parts:
            if rel is None:
                continue
            target = root / rel
            if not getattr(target, test)():
                raise ConfigError(f"config error: {key}.{field_name}: {target} does not exist"
                                  f"{'' if spec.get(field_name) else ' (the ' + fmt + ' default)'}; "
                                  f"{_how_to_get(fmt, spec['path'])}, or set {key}.{field_name}")


# -- held-out captioned faces --------------------------------------------------------------------------
def read_captions(tars: list[str], limit: int | None = None,
                  keep=None) -> tuple[list[str], list[bytes], list[str]]:
    """(keys, JPEG bytes, captions) from caption shards ``<key>.jpg`` + ``<key>.txt``, in shard order; with
    ``keep`` (a set of keys) only those samples."""
    keys, images, texts = [], [], []
    for tar in tars:
        if not Path(tar).exists():
            raise EvaluateInputError(f"{tar}: missing caption shard; run the captions stage first")
        errors: list = []
        for s in iter_samples(tar, errors):
            if "jpg" not in s or "txt" not in s or (keep is not None and s["__key__"] not in keep):
                continue
            text = s["txt"].decode("utf-8").strip()
            if not text:
                continue
            keys.append(s["__key__"])
            images.append(s["jpg"])
            texts.append(text)
            if limit and len(keys) >= limit:
                return keys, images, texts
        if errors:
            raise EvaluateInputError(f"{tar}: {errors[0]['reason']}")
    return keys, images, texts

