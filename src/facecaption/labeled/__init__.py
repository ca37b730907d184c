"""The labeled attribute set: aligned face crops with attribute labels, split train/val/test.

The attribute classifier trains on it (as the paper's classifier trained on CelebA) and the linear
probe is scored on it. Splits never share an identity. Sources:

* ``synthface`` (embedded default): rendered faces of held-out identities, aligned by their true
  landmarks with the same template the faces stage uses;
* ``celeba``: a local CelebA folder in its published format (``labeled.celeba_dir``), official partition;
  aligned by CelebA's 5 landmarks (``list_landmarks_align_celeba.txt``) with the same function and template,
  or centre-cropped with one warning when the landmark file is missing.

Each split is the outputs ``<split>_images`` (``results/labeled/<split>.tar``: ``key.jpg``, ``key.json``) and
``<split>_labels`` (``<split>.parquet``: ``key, split, identity`` and one 0/1 column per labeled attribute).
"""

from __future__ import annotations

import logging
import sys

import pandas as pd
from tqdm import tqdm

from facecaption.core import rng as rngmod
from facecaption.core.align import align
from facecaption.core.config import StageConfig
from facecaption.core.shards import ShardWriter, encode_jpeg, write_parquet
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # outputs <split>_images and <split>_labels
# identity ids of the labeled splits start far above the crawl's pool, so they never coincide
_ID_BASE = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000}


def _synthface_split(cfg: dict, split: str):
    from facecaption.synthface.render import DRAWABLE, render_image, sample_identity

    lab, seed = cfg["labeled"], cfg["seed"]
    n_ids, per_id = lab["identities"][split], lab["images_per_identity"]
    for i in tqdm(range(n_ids), desc=f"labeled {split}", mininterval=2):
        identity_id = _ID_BASE[split] + i
        identity = sample_identity(rngmod.stream(seed, "synthface/identity", identity_id))
        for j in range(per_id):
            rng = rngmod.stream(seed, "labeled/image", identity_id, j)
            image, faces = render_image(rng, size=lab["render_size"], n_faces=1, face_scale=(0.4, 0.55),
                                        identities=[identity])
            face = faces[0]
            crop, _ = align(image, face["landmarks"], cfg["align"]["size"], cfg["align"]["scale"])
            labels = {a: int(bool(face["attributes"].get(a, False))) for a in DRAWABLE}
            yield f"{split}_{i:06d}_{j:02d}", identity_id, crop, labels


def run(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.core.celeba_files import CelebAFormatError

    try:
        return _run(cfg, io)
    except CelebAFormatError as exc:  # a bad or missing CelebA folder: one line naming the file
        print(f"labeled: {exc}", file=sys.stderr)
        return 2


def _run(cfg: StageConfig, io: StageIO) -> int:
    lab = cfg["labeled"]
    landmarks = None
    if lab["source"] == "celeba":
        from facecaption.core.celeba_files import HOW_TO_GET, CelebAFormatError, landmarks_path

        if not lab.get("celeba_dir"):
            raise CelebAFormatError(f"labeled.celeba_dir is not set; {HOW_TO_GET}")
        landmarks = landmarks_path(cfg)  # once per run: the fallback's warning is one line
    for split in SPLITS:
        rows = []
        if lab["source"] == "synthface":
            samples = _synthface_split(cfg, split)
        else:
            from facecaption.core.celeba_files import iter_split

            samples = iter_split(cfg, split, landmarks)
        with ShardWriter(io.outputs[f"{split}_images"]) as writer:
            for key, identity, crop, labels in samples:
                writer.write({"__key__": key, "jpg": encode_jpeg(crop), "json": {"identity": identity, **labels}})
                rows.append({"key": key, "split": split, "identity": identity, **labels})
        write_parquet(pd.DataFrame(rows), io.outputs[f"{split}_labels"])
        log.info("labeled %s: %d faces", split, len(rows))
    return 0
