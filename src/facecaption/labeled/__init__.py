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

from facecaption.core.align import align
from facecaption.core.config import StageConfig
from facecaption.core.shards import ShardWriter, encode_jpeg, write_parquet
from facecaption.core.stage import StageIO
from facecaption.synthface.plant import ID_BASE

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # outputs <split>_images and <split>_labels
_ID_BASE = ID_BASE  # identity ids of the labeled splits start far above the crawl's pool, so they never coincide


def _synthface_split(cfg: dict, split: str):
    from facecaption.synthface.plant import labeled_key, render_labeled
    from facecaption.synthface.render import DRAWABLE

    lab, seed = cfg["labeled"], cfg["seed"]
    n_ids, per_id = lab["identities"][split], lab["images_per_identity"]
    for i in tqdm(range(n_ids), desc=f"labeled {split}", mininterval=2):
        identity_id = _ID_BASE[split] + i
        for j in range(per_id):
            image, face = render_labeled(seed, identity_id, j, lab["render_size"])
            crop, _ = align(image, face["landmarks"], cfg["align"]["size"], cfg["align"]["scale"])
            labels = {a: int(bool(face["attributes"].get(a, False))) for a in DRAWABLE}
            yield labeled_key(split, i, j), identity_id, crop, labels


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
