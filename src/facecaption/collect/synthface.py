"""The embedded source: a synthetic 'crawl' of procedurally rendered faces with known ground truth.

Like a real crawl it holds portraits, group photos, tiny faces, degraded images and images with no face,
each with a noisy alt-text. Everything derives from (seed, shard, index), so shards are independent
and byte-identical across runs.
"""

from __future__ import annotations

import logging

import numpy as np

from facecaption.core.config import StageConfig
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

# Words a crawl's alt-texts use; deliberately loose, often unrelated to the face (as LAION alt-texts are).
_SUBJECT = {True: ["man", "guy", "businessman", "actor", "male model"],
            False: ["woman", "girl", "businesswoman", "actress", "female model"]}
_TEMPLATES = [
    "portrait of a {adj} {subj}", "{adj} {subj} {place} - stock photo", "close-up of {subj} {place}",
    "{subj} looking at camera", "IMG_{num}.jpg", "photo {num}", "{adj} {subj}, free stock image",
    "headshot of a {subj} | {brand}", "{subj} {place}", "best {subj} portraits {year}",
]
_ADJ = ["happy", "young", "serious", "smiling", "confident", "beautiful", "old", "casual", "professional"]
_PLACE = ["in the park", "at the office", "on white background", "outdoors", "in the city", "at home"]
_BRAND = ["Shutterstock", "Getty", "pixabay", "Flickr", "Unsplash"]
_NOFACE = ["sunset over the hills", "abstract background texture", "IMG_{num}.jpg", "product photo {num}",
           "city skyline at night", "colorful pattern wallpaper"]


def alt_text(rng: np.random.Generator, faces: list[dict]) -> str:
    num = int(rng.integers(1000, 9999))
    if not faces:
        return rng.choice(_NOFACE).format(num=num)
    male = bool(faces[0]["attributes"].get("Male", rng.random() < 0.5))
    if rng.random() < 0.15:  # alt-texts sometimes get the person wrong
        male = not male
    subj = rng.choice(_SUBJECT[male]) if len(faces) == 1 else rng.choice(["people", "group of friends", "team", "family"])
    adj = "smiling" if faces[0]["attributes"].get("Smiling") and rng.random() < 0.5 else rng.choice(_ADJ)
    return rng.choice(_TEMPLATES).format(adj=adj, subj=subj, place=rng.choice(_PLACE), num=num,
                                         brand=rng.choice(_BRAND), year=int(rng.integers(2010, 2024)))


def plan_image(rng: np.random.Generator, sf: dict) -> dict:
    """What one image holds: number of faces, their scale, and an optional degradation."""
    u = rng.random()
    if u < sf["p_no_face"]:
        n_faces = 0
    elif u < sf["p_no_face"] + sf["p_multi_face"]:
        n_faces = int(rng.integers(2, sf["max_faces"] + 1))
    else:
        n_faces = 1
    tiny = n_faces > 0 and rng.random() < sf["p_tiny_face"]
    if tiny:
        scale = tuple(sf["tiny_face_scale"])
    elif n_faces > 1:  # group photos hold smaller faces
        lo, hi = sf["face_scale"]
        scale = (lo * 0.6, hi * 0.6)
    else:
        scale = tuple(sf["face_scale"])
    degrade = None
    if rng.random() < sf["p_degraded"] and sf["degradations"]:
        degrade = str(rng.choice(sf["degradations"]))
    return {"n_faces": n_faces, "face_scale": scale, "degrade": degrade, "tiny": tiny}


def plan(cfg: dict) -> int:
    """The number of collect shards: ``synthface.num_shards`` (at least one)."""
    return max(int(cfg["synthface"]["num_shards"]), 1)


def collect_shard(cfg: StageConfig, io: StageIO) -> None:
    """Render shard ``io.shard`` into the outputs ``images`` (tar), ``records`` and ``truth``."""
    # imported here: shard planning (plan) imports this module and needs none of them
    import pandas as pd  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from facecaption.collect.faults import Injector  # noqa: PLC0415
    from facecaption.core import rng as rngmod  # noqa: PLC0415
    from facecaption.core.shards import ShardWriter, encode_jpeg, write_parquet  # noqa: PLC0415
    from facecaption.synthface import plant as plantmod  # noqa: PLC0415
    from facecaption.synthface.render import DRAWABLE, render_image, sample_identity  # noqa: PLC0415

    sf, seed, shard = cfg["synthface"], cfg["seed"], io.shard
    tar_path, parquet_path, truth_path = io.outputs["images"], io.outputs["records"], io.outputs["truth"]
    shard_no = int(shard)
    rows, truth = [], []
    faults = Injector(cfg, shard)  # synthface.faults: bad data on purpose (off by default)
    # synthface.plant: labeled test faces planted in the crawl, with the truth (off by default: nothing changes)
    plants = plantmod.plan(seed, sf.get("plant"), sf["num_shards"], sf["images_per_shard"])
    with ShardWriter(tar_path) as writer:
        for idx in tqdm(range(sf["images_per_shard"]), desc=f"collect {shard}", mininterval=2):
            key = f"{shard}_{idx:05d}"
            rng = rngmod.stream(seed, "synthface/image", shard_no, idx)
            planted = plants.get((shard_no, idx))
            if planted is None:
                plan = plan_image(rng, sf)
                ids = [int(rng.integers(0, sf["identities"])) for _ in range(plan["n_faces"])]
                identities = [sample_identity(rngmod.stream(seed, "synthface/identity", i)) for i in ids]
                image, faces = render_image(rng, size=sf["image_size"], n_faces=plan["n_faces"],
                                            face_scale=plan["face_scale"], degrade=plan["degrade"],
                                            identities=identities)
                jpg, shape = encode_jpeg(image, quality=sf["jpeg_quality"]), image.shape
            else:
                plan = {"degrade": None, "tiny": False}
                jpg, shape, faces, ids = plantmod.render_plant(seed, planted, shard_no, idx, sf)
            caption = alt_text(rng, faces)
            meta = {"key": key, "url": f"synthface://{seed}/{shard}/{idx}", "width": shape[1],
                    "height": shape[0], "source": "synthface"}
            sample = {"__key__": key, "jpg": jpg, "txt": caption, "json": meta}
            for sample, row in faults.apply(idx, sample, {**meta, "caption": caption, "status": "success",
                                                          "error_message": None}):
                writer.write(sample)
                rows.append(row)
            for f_idx, face in enumerate(faces if faults.intact(idx) else []):
                x0, y0, x1, y1 = (float(v) for v in face["box"])
                truth.append({
                    "key": key, "face": f_idx, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                    "landmarks": [float(v) for v in np.asarray(face["landmarks"]).ravel()],
                    "identity": ids[f_idx] if f_idx < len(ids) else -1,
                    "degrade": plan["degrade"] or "none", "tiny": plan["tiny"],
                    **{a: bool(face["attributes"].get(a, False)) for a in DRAWABLE},
                    **({"planted": planted["kind"] if planted else "", "planted_key": planted["key"] if planted else ""}
                       if plants else {}),
                })
    faults.finish(tar_path)
    write_parquet(pd.DataFrame(rows), parquet_path)
    columns = ["key", "face", "x0", "y0", "x1", "y1", "landmarks", "identity", "degrade", "tiny", *DRAWABLE,
               *(["planted", "planted_key"] if plants else [])]
    write_parquet(pd.DataFrame(truth, columns=columns), truth_path)
    log.info("shard %s: %d images, %d faces", shard, len(rows), len(truth))
