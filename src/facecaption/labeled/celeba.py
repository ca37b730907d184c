"""CelebA in its published format: ``img_align_celeba/``, ``list_attr_celeba.txt``,
``list_eval_partition.txt`` (0 = train, 1 = val, 2 = test). Problems stop with the file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facecaption.celeba import ATTRIBUTES
from facecaption.shards import leaves_folder

SPLIT_CODE = {"train": "0", "val": "1", "test": "2"}
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


def iter_split(cfg: dict, split: str):
    """Yield (key, identity, aligned RGB crop, labels) for one official split (crops resized to align.size)."""
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
    names = sorted(n for n, s in partition.items() if s == SPLIT_CODE[split])
    if lab.get("max_images"):
        names = names[: lab["max_images"]]
    size = cfg["align"]["size"]
    for name in names:
        path = images / name
        if not path.exists():
            raise CelebAFormatError(f"{path}: listed in list_eval_partition.txt but missing")
        # CelebA's aligned crops are 178×218; centre-crop to a square and resize to the pipeline's size
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            top = (h - side) // 2
            crop = np.asarray(im.crop((0, top, side, top + side)).resize((size, size), Image.BICUBIC))
        yield Path(name).stem, -1, crop, dict(zip(header, labels[name]))
