"""Planted contamination: the labeled set's test faces put into the synthetic crawl on purpose, with the truth
recorded, so the audit stage's recall and precision can be measured (``synthface.plant``).

* ``identities: N``: N crawl images show a labeled *test identity* (a new picture of that person: another pose,
  background, expression), identities ``test 0 .. N-1``;
* ``near_copies: M``: M crawl images are *near copies* of a labeled test image (image 0 of test identities
  ``N .. N+M-1``): the same rendered picture (the labeled stage's stream; identical to the labeled source when
  ``labeled.render_size`` equals ``synthface.image_size``, both 256 by default), slightly cropped, colour-jittered
  and re-encoded as JPEG at a lower quality.

Planted images take the place of seeded crawl slots (a permutation of every (shard, index) of the crawl), so the
rest of the crawl is unchanged; with ``N = M = 0`` nothing changes at all. The truth parquet then carries two more
columns: ``planted`` (``identity``, ``near_copy`` or empty) and ``planted_key`` (the labeled test key a near copy
copies; for an identity plant the key of that identity's first test image).
"""

from __future__ import annotations

import io

import numpy as np

from facecaption.core import rng as rngmod

# identity ids of the labeled splits start far above the crawl's pool, so they never coincide
ID_BASE = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000}
KINDS = ("identity", "near_copy")


def labeled_key(split: str, i: int, j: int) -> str:
    """The labeled stage's sample key of image ``j`` of identity ``i`` of a split."""
    return f"{split}_{i:06d}_{j:02d}"


def render_labeled(seed: int, identity_id: int, j: int, size: int):
    """Picture ``j`` of a labeled identity, as the labeled stage renders it: (image, face)."""
    from facecaption.synthface.render import render_image, sample_identity

    identity = sample_identity(rngmod.stream(seed, "synthface/identity", identity_id))
    rng = rngmod.stream(seed, "labeled/image", identity_id, j)
    image, faces = render_image(rng, size=size, n_faces=1, face_scale=(0.4, 0.55), identities=[identity])
    return image, faces[0]


def plan(seed: int, plant: dict | None, num_shards: int, images_per_shard: int) -> dict[tuple[int, int], dict]:
    """``{(shard number, image index): {"kind", "test_index", "key"}}`` for every planted image (empty when the
    plant is off)."""
    plant = plant or {}
    n_id, n_copy = int(plant.get("identities", 0)), int(plant.get("near_copies", 0))
    total = num_shards * images_per_shard
    if n_id + n_copy == 0:
        return {}
    if n_id + n_copy > total:
        raise ValueError(f"synthface.plant: {n_id + n_copy} planted images, but the crawl has only {total} slots")
    slots = rngmod.stream(seed, "synthface/plant/slots").permutation(total)[: n_id + n_copy]
    out = {}
    for t, slot in enumerate(slots.tolist()):
        kind = "identity" if t < n_id else "near_copy"
        out[divmod(int(slot), images_per_shard)] = {"kind": kind, "test_index": t,
                                                    "key": labeled_key("test", t, 0)}
    return out


def perturb(image: np.ndarray, rng: np.random.Generator, quality: int, face: dict | None = None) -> bytes:
    """A near copy: up to 6 % cropped from each side (resized back), brightness and contrast jittered by up to
    8 %, a colour cast of up to 4 %, JPEG at ``quality`` minus 10-30. ``face`` (box, landmarks): moved in place
    to where the crop put them."""
    from PIL import Image

    h, w = image.shape[:2]
    left, t, r, b = (int(v) for v in rng.integers(0, max(2, int(0.06 * min(h, w))), 4))
    crop = Image.fromarray(image[t:h - b, left:w - r]).resize((w, h), Image.BICUBIC)
    if face is not None:
        sx, sy = w / (w - left - r), h / (h - t - b)
        pts = np.asarray(face["landmarks"], np.float64).reshape(-1, 2)
        face["landmarks"] = np.stack([(pts[:, 0] - left) * sx, (pts[:, 1] - t) * sy], 1)
        x0, y0, x1, y1 = (float(v) for v in face["box"])
        face["box"] = [(x0 - left) * sx, (y0 - t) * sy, (x1 - left) * sx, (y1 - t) * sy]
    x = np.asarray(crop).astype(np.float32)
    x = (x - 128.0) * float(rng.uniform(0.92, 1.08)) + 128.0 + float(rng.uniform(-0.08, 0.08)) * 255
    x = x * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(max(30, quality - rng.integers(10, 31))), subsampling=0)
    return buf.getvalue()


def render_plant(seed: int, spec: dict, shard_no: int, idx: int, sf: dict):
    """(JPEG bytes, image array shape, faces, identity ids) of one planted crawl image."""
    from facecaption.core.shards import encode_jpeg
    from facecaption.synthface.render import render_image, sample_identity

    identity_id = ID_BASE["test"] + spec["test_index"]
    rng = rngmod.stream(seed, "synthface/plant/image", shard_no, idx)
    if spec["kind"] == "identity":
        identity = sample_identity(rngmod.stream(seed, "synthface/identity", identity_id))
        image, faces = render_image(rng, size=sf["image_size"], n_faces=1, face_scale=tuple(sf["face_scale"]),
                                    identities=[identity])
        return encode_jpeg(image, quality=sf["jpeg_quality"]), image.shape, faces, [identity_id]
    image, face = render_labeled(seed, identity_id, 0, sf["image_size"])
    jpg = perturb(image, rng, sf["jpeg_quality"], face)  # the truth's box and landmarks follow the crop
    return jpg, image.shape, [face], [identity_id]
