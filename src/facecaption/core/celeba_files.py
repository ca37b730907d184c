"""CelebA in its published format: ``img_align_celeba/``, ``list_attr_celeba.txt``,
``list_eval_partition.txt`` (0 = train, 1 = val, 2 = test) and ``list_landmarks_align_celeba.txt`` (5 points
per image). Problems stop with the file and line.

Framing: CelebA's 178×218 images are aligned by their eyes only, loosely. When the landmark file is there,
every image is aligned with the faces stage's own function and template (:func:`facecaption.core.align.align`,
``align.size`` / ``align.scale``), so the attribute classifier trains on the framing of the crawled faces it
labels. Without it, images are centre-cropped to a square (a tighter, differently placed framing) and one
warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from facecaption.core.align import align
from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.shards import leaves_folder

log = logging.getLogger(__name__)

SPLIT_CODE = {"train": "0", "val": "1", "test": "2"}
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
LANDMARK_COLUMNS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
HOW_TO_GET = ("download CelebA (Aligned&Cropped images and the annotation files) from "
              "mmlab.ie.cuhk.edu.hk/projects/CelebA.html and set labeled.celeba_dir to its folder")


class CelebAFormatError(ValueError):
    pass


def _require(path: Path) -> Path:
    if not path.exists():
        raise CelebAFormatError(f"{path}: missing; {HOW_TO_GET}")
    return path


def read_attributes(path: str | Path) -> tuple[list[str], dict[str, list[int]]]:
    """Parse ``list_attr_celeba.txt``: a count line, a header of attribute names, then ``name v1 .. v40``."""
    path = _require(Path(path))
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise CelebAFormatError(f"{path}:1: expected a count line and a header line")
    header = lines[1].split()
    unknown = [h for h in header if h not in ATTRIBUTES]
    if unknown:
        raise CelebAFormatError(f"{path}:2: unknown attribute name {unknown[0]!r}")
    labels: dict[str, list[int]] = {}
    for no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(header) + 1:
            raise CelebAFormatError(f"{path}:{no}: expected {len(header) + 1} fields, found {len(parts)}")
        if leaves_folder(parts[0]):
            raise CelebAFormatError(f"{path}:{no}: image name {parts[0]!r} leaves the image folder")
        values = []
        for v in parts[1:]:
            if v not in ("1", "-1"):
                raise CelebAFormatError(f"{path}:{no}: attribute value {v!r} is not -1 or 1")
            values.append(1 if v == "1" else 0)
        labels[parts[0]] = values
    return header, labels


def read_partition(path: str | Path) -> dict[str, str]:
    path = _require(Path(path))
    out = {}
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise CelebAFormatError(f"{path}:{no}: expected 'image.jpg 0|1|2'")
        if leaves_folder(parts[0]):
            raise CelebAFormatError(f"{path}:{no}: image name {parts[0]!r} leaves the image folder")
        out[parts[0]] = parts[1]
    return out


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a landmark list in CelebA's format (``list_landmarks_align_celeba.txt``): a count line, the
    header ``lefteye_x lefteye_y … rightmouth_y``, then ``name x1 y1 .. x5 y5`` (left eye = image left)."""
    path = _require(Path(path))
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise CelebAFormatError(f"{path}:1: expected a count line and a header line")
    if tuple(lines[1].split()) != LANDMARK_COLUMNS:
        raise CelebAFormatError(f"{path}:2: expected the header {' '.join(LANDMARK_COLUMNS)!r}")
    out: dict[str, np.ndarray] = {}
    for no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 11:
            raise CelebAFormatError(f"{path}:{no}: expected 11 fields (image and 10 coordinates), found {len(parts)}")
        try:
            values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise CelebAFormatError(f"{path}:{no}: coordinates must be numbers") from None
        if not np.isfinite(values).all():
            raise CelebAFormatError(f"{path}:{no}: coordinates must be finite numbers")
        out[parts[0]] = values.reshape(5, 2)
    return out


def landmarks_path(cfg: dict, warn: bool = True) -> Path | None:
    """The landmark file of ``labeled.celeba_dir`` to align with, or None (centre crop, one warning).

    ``labeled.celeba_landmarks`` absent: ``list_landmarks_align_celeba.txt`` when it is there; a name: that
    file (it must exist); null: none."""
    lab = cfg["labeled"]
    root = Path(lab["celeba_dir"])
    if "celeba_landmarks" in lab and lab["celeba_landmarks"] is None:
        path, why = None, "labeled.celeba_landmarks is null"
    else:
        path = root / (lab.get("celeba_landmarks") or LANDMARKS_FILE)
        if "celeba_landmarks" in lab and not path.exists():
            raise CelebAFormatError(f"{path}: missing (labeled.celeba_landmarks); {HOW_TO_GET}")
        why = f"{path}: missing"
        if path.exists():
            return path
        path = None
    if warn:
        log.warning("%s; CelebA images are centre-cropped, not aligned to the faces stage's 5-point template, "
                    "so the attribute classifier trains on another framing than the crawled faces it labels", why)
    return path


def centre_crop(im: Image.Image, size: int) -> np.ndarray:
    """The fallback framing: the middle square of a CelebA image, resized to ``size``."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))


def iter_split(cfg: dict, split: str, landmarks: str | Path | None = "auto"):
    """Yield (key, identity, aligned RGB crop, labels) for one official split (crops of align.size).

    ``landmarks``: a landmark file, None (centre crop), or "auto" (:func:`landmarks_path`, which warns
    when there is none)."""
    lab = cfg["labeled"]
    if not lab.get("celeba_dir"):
        raise CelebAFormatError(f"labeled.celeba_dir is not set; {HOW_TO_GET}")
    root = Path(lab["celeba_dir"])
    header, labels = read_attributes(root / "list_attr_celeba.txt")
    partition = read_partition(root / "list_eval_partition.txt")
    images = _require(root / "img_align_celeba")
    missing = sorted(set(partition) - set(labels))
    if missing:
        raise CelebAFormatError(f"{root / 'list_eval_partition.txt'}: {missing[0]} has no row in list_attr_celeba.txt")
    if landmarks == "auto":
        landmarks = landmarks_path(cfg)
    points = read_landmarks(landmarks) if landmarks is not None else None
    names = sorted(n for n, s in partition.items() if s == SPLIT_CODE[split])
    if lab.get("max_images"):
        names = names[: lab["max_images"]]
    size, scale = cfg["align"]["size"], cfg["align"]["scale"]
    for name in names:
        path = images / name
        if not path.exists():
            raise CelebAFormatError(f"{path}: listed in list_eval_partition.txt but missing")
        if points is not None and name not in points:
            raise CelebAFormatError(f"{landmarks}: {name} (listed in list_eval_partition.txt) has no landmarks")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if points is not None:  # the faces stage's alignment: 5-point similarity onto the template
                crop, _ = align(np.asarray(im), points[name], size, scale)
            else:
                crop = centre_crop(im, size)
        yield Path(name).stem, -1, crop, dict(zip(header, labels[name]))
