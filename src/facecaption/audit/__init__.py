"""Stage audit: is any evaluation test face in the pre-training pool?

Inputs: the caption shards (``results/captions/<shard>.tar``: the aligned crops FLIP trains on), the labeled set's
test split (``results/labeled/test.{tar,parquet}``) and the test partition of every ``evaluate.datasets`` folder
(read by :mod:`facecaption.core.evalsets`, as evaluation reads them). Two questions, per evaluation set:

* **near copies**: a pool crop whose 64-bit pHash is within ``audit.hamming`` bits of a test image's (0 bits: an
  exact copy);
* **same identity**: a pool face whose embedding has cosine ≥ ``audit.cosine`` with a test face
  (:func:`facecaption.audit.features.choose_embedder`: the faces stage's insightface recognition model when its
  file is there, else FLIP's image encoder; the report says which). A set without identity labels is skipped here
  with the reason recorded (the near-copy audit still runs).

The pool is streamed shard by shard against one faiss index per test split (:mod:`facecaption.audit.search`).
An unreadable test image is recorded with its reason and left out, never fatal.

With planted contamination (``synthface.plant``, the truth in the collect truth's ``planted``/``planted_key``
columns) the report measures the audit's recall and precision against that truth.

Outputs: ``report`` (``results/reports/audit``: metrics, tables, the example-pair figure), ``metrics``
(``results/metrics/audit.json``) and ``contaminated`` (``results/audit/contaminated.parquet``: one row per
contaminated test item, ``dataset, key, near_copy, identity, hamming, cosine, pool_key``), from which evaluation
could be recomputed without them (the next step; evaluation does not read it yet).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facecaption.audit import features as F
from facecaption.audit import search as S
from facecaption.core import evalsets
from facecaption.core import split as splitmod
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, setup_plotting
from facecaption.core.shards import iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

CONTAMINATED_COLUMNS = ["dataset", "key", "near_copy", "identity", "hamming", "inliers", "cosine", "pool_key"]


@dataclass
class TestSet:
    name: str
    keys: list[str]
    images: list  # PIL images (readable ones only)
    identities: list  # per key ("" / -1 / None = unknown)
    errors: list = field(default_factory=list)  # {"key", "reason"}
    hashes: np.ndarray | None = None
    thumbs: np.ndarray | None = None
    keypoints: list | None = None
    embeddings: np.ndarray | None = None
    identity_skip: str = ""  # why the identity audit did not run on this set ("" = it ran)

    @property
    def has_identities(self) -> bool:
        return bool(self.keys) and all(i not in evalsets.UNKNOWN_IDENTITY for i in self.identities)


def _decode(name: str, keys: list[str], sources: list, identities: list, size: int, errors: list) -> TestSet:
    ts = TestSet(name, [], [], [], errors)
    for key, src, ident in zip(keys, sources, identities):
        try:
            im = F.open_rgb(src, size)
        except Exception as exc:  # noqa: BLE001 - an unreadable test image: recorded, not fatal
            errors.append({"key": key, "reason": f"unreadable_image: {type(exc).__name__}"})
            continue
        ts.keys.append(key)
        ts.images.append(im)
        ts.identities.append(ident)
    return ts


def threads() -> int:
    """The rule's threads (Snakemake exports them as FACECAPTION_THREADS / OMP_NUM_THREADS)."""
    for var in ("FACECAPTION_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return 1


def read_test_sets(cfg: StageConfig, io: StageIO) -> list[TestSet]:
    """The labeled set's test split and every ``evaluate.datasets`` test partition, decoded at ``align.size``."""
    size = int(cfg["align"]["size"])
    sets = []
    tar, labels = io.one("test_images"), io.one("test_labels")
    errors: list = []
    df = read_parquet(labels)
    images = {s["__key__"]: s.get("jpg") for s in iter_samples(tar, errors)}
    for e in errors:
        e["reason"] = f"unreadable_tar: {e['reason']}"
    keys = df["key"].tolist()
    idents = df["identity"].tolist() if "identity" in df else [""] * len(df)
    present = [k in images and images[k] is not None for k in keys]
    errors += [{"key": k, "reason": "missing_from_tar"} for k, ok in zip(keys, present) if not ok]
    sets.append(_decode(evalsets.labeled_set_name(cfg), [k for k, ok in zip(keys, present) if ok],
                        [images[k] for k, ok in zip(keys, present) if ok],
                        [i for i, ok in zip(idents, present) if ok], size, errors))
    for spec in cfg["evaluate"].get("datasets") or []:
        errors = []
        ds = evalsets.read_dataset(spec, cfg["seed"], cfg["align"], errors=errors)
        test = ds.splits["test"]
        sets.append(_decode(ds.name, test.keys, test.sources, test.identities, size, errors))
    return sets


def planted_truth(truth_paths: list[str]) -> pd.DataFrame:
    """Planted crawl images: ``image_key, planted, planted_key, identity`` (empty without a plant)."""
    frames = []
    for p in truth_paths:
        if not Path(p).exists():
            continue
        t = read_parquet(p)
        if "planted" in t.columns:
            frames.append(t[t["planted"] != ""][["key", "planted", "planted_key", "identity"]])
    if not frames:
        return pd.DataFrame(columns=["image_key", "planted", "planted_key", "identity"])
    return pd.concat(frames, ignore_index=True).rename(columns={"key": "image_key"})


def _pool_batches(tars: list[str], size: int, batch: int, skipped: list):
    """(shard, keys, PIL crops) of the caption shards, ``batch`` at a time, shard by shard."""
    for tar in tars:
        errors: list = []
        keys, ims = [], []
        for s in iter_samples(tar, errors):
            if "jpg" not in s:
                continue
            try:
                ims.append(F.open_rgb(s["jpg"], size))
                keys.append(s["__key__"])
            except Exception as exc:  # noqa: BLE001
                skipped.append({"key": s["__key__"], "reason": f"unreadable_image: {type(exc).__name__}"})
            if len(keys) >= batch:
                yield tar, keys, ims
                keys, ims = [], []
        if keys:
            yield tar, keys, ims
        skipped.extend(errors)


def held_out_set(split_file: str | list | None, tars: list[str], size: int) -> tuple[TestSet | None, set[str]]:
    """(retrieval's test faces as a test set without identities, the held-out shards): the train stage's held-out
    caption shards; (None, empty) without a split (the audit then runs before training) or held-out shards."""
    path = split_file[0] if isinstance(split_file, list) else split_file
    if not path or not Path(path).exists():  # no training in this run (a stage run alone): nothing is held out
        return None, set()
    split = splitmod.read(path)
    held = [t for t in tars if t in set(split.held_out)]
    if not held:
        return None, set()
    keys, images, errors = [], [], []
    for _, k, ims in _pool_batches(held, size, 10_000, errors):
        keys += k
        images += ims
    return TestSet(splitmod.HELD_OUT_SET, keys, images, [""] * len(keys), errors), set(held)


def calibrate(embedder, io: StageIO, au: dict, seed: int, size: int, test_size: int) -> tuple[float, dict]:
    """(cosine threshold, what set it): ``audit.cosine`` when it is a number; for ``auto``, the cosine that
    pairs of different identities of the labeled training split (at most ``calibration_images`` images, a seeded
    sample) exceed at the rate ``false_match_rate / test_size``: a pool crop is compared with every face of a test
    split (``test_size``: the largest), so for a share ``false_match_rate`` of pool crops to match someone they are
    not, each pair may match at that share divided by the test faces. Reported with the share of same-identity
    pairs it accepts (the true-match rate)."""
    if au["cosine"] != "auto":
        return float(au["cosine"]), {"rule": "audit.cosine", "threshold": float(au["cosine"])}
    from facecaption.core import rng as rngmod

    df = read_parquet(io.one("train_labels"))
    if "identity" not in df or df["identity"].isin(evalsets.UNKNOWN_IDENTITY).any() or df["identity"].nunique() < 2:
        return None, {"rule": "audit.cosine: auto", "skipped": "the labeled training split has no identities to set "
                      "the threshold on (CelebA without identity_CelebA.txt?): set audit.cosine to a number"}
    n = min(len(df), int(au["calibration_images"]))
    pick = np.sort(rngmod.stream(seed, "audit/calibration").choice(len(df), n, replace=False))
    want = set(df["key"].iloc[pick])
    images = {s["__key__"]: s["jpg"] for s in iter_samples(io.one("train_images")) if s["__key__"] in want}
    rows = [r for r in df.iloc[pick].itertuples() if r.key in images]
    emb = embedder([F.open_rgb(images[r.key], size) for r in rows])
    ident = np.array([r.identity for r in rows])
    sims = emb @ emb.T
    upper = np.triu(np.ones(sims.shape, bool), 1)
    same = upper & (ident[:, None] == ident[None, :])
    diff = upper & ~same
    pair_rate = au["false_match_rate"] / max(test_size, 1)
    q = float(np.quantile(sims[diff], 1.0 - pair_rate)) if diff.any() else 1.0
    threshold = float(np.nextafter(np.float32(q), np.float32(2)))  # above the quantile: ties do not match
    return threshold, {"rule": f"auto: a share {au['false_match_rate']} of pool crops may match another identity "
                               f"among {test_size} test faces (pairs: {pair_rate:.2g}), on the labeled training split",
                       "threshold": threshold, "false_match_rate": au["false_match_rate"],
                       "pair_false_match_rate": pair_rate, "images": len(rows),
                       "identities": int(len(set(ident.tolist()))),
                       "different_pairs": int(diff.sum()), "same_pairs": int(same.sum()),
                       "pair_false_matches": float((sims[diff] >= threshold).mean()) if diff.any() else None,
                       "true_match_rate": float((sims[same] >= threshold).mean()) if same.any() else None}


def audit(cfg: StageConfig, io: StageIO) -> dict:
    """The audit's findings as data (the report and the artifact are written from it)."""
    au = cfg["audit"]
    size = int(cfg["align"]["size"])
    sets = read_test_sets(cfg, io)
    held, held_shards = held_out_set(io.inputs.get("split"), io.many("pairs"), size)
    if held is not None:
        sets.append(held)  # compared with the training shards only: it is itself a part of the pool
    flip = io.inputs.get("model")  # audit.checkpoint or this run's FLIP (a file named in config: a list)
    kind, path, why = F.choose_embedder(au, cfg["faces"], flip[0] if isinstance(flip, list) else flip)
    embedder = F.Embedder(kind, path, au["batch"]) if kind else None
    test_size = max((len(ts.keys) for ts in sets), default=1)
    cosine, calibration = calibrate(embedder, io, au, cfg["seed"], size, test_size) if embedder else (None, None)
    kp = F.Keypoints()
    pool = ThreadPoolExecutor(threads())  # keypoints and their checks: OpenCV releases the GIL
    hindex, tindex, eindex, index_kind = {}, {}, {}, {}
    for ts in sets:
        ts.hashes = np.stack([F.phash(im) for im in ts.images]) if ts.images else np.zeros((0, 8), np.uint8)
        hindex[ts.name] = S.binary_index(ts.hashes)
        ts.thumbs = np.stack([F.thumb(im) for im in ts.images]) if ts.images else np.zeros((0, 192), np.float32)
        tindex[ts.name] = S.embedding_index(ts.thumbs, "flat")[0]
        ts.keypoints = list(pool.map(kp.describe, ts.images))
        if embedder is None:
            ts.identity_skip = f"no embedder: {why}"
        elif cosine is None:
            ts.identity_skip = f"no identity threshold: {calibration['skipped']}"
        elif not ts.has_identities:
            ts.identity_skip = "no identity labels in this set: same-identity overlap cannot be counted by identity"
        else:
            ts.embeddings = embedder(ts.images)
            eindex[ts.name], index_kind[ts.name] = S.embedding_index(ts.embeddings, au["index"], au["ivf_above"],
                                                                     au["nprobe"])
        log.info("audit: %s: %d test images (%d unreadable)%s", ts.name, len(ts.keys), len(ts.errors),
                 f"; identity audit skipped: {ts.identity_skip}" if ts.identity_skip else "")
    near = defaultdict(list)  # set name -> [(pool key, test row, pHash bits, keypoint inliers)]
    same = defaultdict(list)  # set name -> [(pool key, test row, cosine)]
    pool_n, skipped, examples, verified = 0, [], {}, 0
    # why near copies are not found by pHash: each pool crop's distance to its nearest labeled test image (a
    # histogram over the pool), and the planted near copies' distances to the very image they copy
    planted = planted_truth(io.many("truth"))
    copies = {r.image_key: r.planted_key for r in planted.itertuples() if r.planted == "near_copy"}
    planted_images, planted_pool = set(planted["image_key"]), defaultdict(list)
    labeled_rows = {k: i for i, k in enumerate(sets[0].keys)}
    nearest_bits, copy_bits = np.zeros(65, np.int64), []
    for shard, keys, ims in _pool_batches(io.many("pairs"), size, au["batch"], skipped):
        pool_n += len(keys)
        for k in keys:  # which planted crops reached the pool (the truth's side of recall)
            if _image_key(k) in planted_images:
                planted_pool[_image_key(k)].append(k)
        hashes = np.stack([F.phash(im) for im in ims])
        if sets[0].keys:
            bits, _ = hindex[sets[0].name].search(hashes, 1)
            for q, (d,) in enumerate(bits):
                src = copies.get(_image_key(keys[q]))
                if src is not None and src in labeled_rows:
                    copy_bits.append(F.hamming(hashes[q], sets[0].hashes[labeled_rows[src]]))
                else:
                    nearest_bits[int(d)] += 1
        thumbs = np.stack([F.thumb(im) for im in ims])
        emb = embedder(ims) if embedder is not None and cosine is not None and eindex else None
        described: dict[int, tuple] = {}
        for ts in sets:
            if ts.name == splitmod.HELD_OUT_SET and shard in held_shards:
                continue  # the held-out faces against the training shards only
            found: dict[tuple[int, int], list] = {}
            for q, t, d in S.hamming_pairs(hindex[ts.name], hashes, au["hamming"]):
                found[(q, t)] = [d, None]  # an exact copy
            sims, rows = S.nearest(tindex[ts.name], thumbs, au["candidates"])
            cands = [(q, int(t)) for q in range(len(keys)) for sim, t in zip(sims[q], rows[q])
                     if t >= 0 and sim >= au["min_layout"]]
            todo = sorted({q for q, _ in cands} - set(described))
            described.update(zip(todo, pool.map(lambda q: kp.describe(ims[q]), todo)))
            counts = list(pool.map(lambda qt: kp.inliers(described[qt[0]], ts.keypoints[qt[1]]), cands))
            verified += len(cands)
            for (q, t), n in zip(cands, counts):
                if n >= au["min_inliers"] or (q, t) in found:
                    found.setdefault((q, t), [F.hamming(hashes[q], ts.hashes[t]), None])[1] = n
            for (q, t), (d, n) in sorted(found.items()):
                near[ts.name].append((keys[q], t, d, n))
                examples.setdefault((ts.name, keys[q]), (ims[q], t, f"{n} inliers" if n is not None else f"{d} bits"))
            if emb is not None and ts.name in eindex:
                for q, t, c in S.cosine_pairs(eindex[ts.name], emb, cosine):
                    same[ts.name].append((keys[q], t, c))
                    examples.setdefault((ts.name, keys[q]), (ims[q], t, f"cos {c:.2f}"))
    pool.shutdown()
    return {"sets": sets, "near": near, "same": same, "pool_n": pool_n, "pool_skipped": skipped,
            "embedder": {"kind": kind, "name": embedder.name if embedder else None, "why": why},
            "cosine": cosine, "calibration": calibration, "verified": verified,
            "planted": planted, "planted_pool": planted_pool,
            "phash": {"unrelated_nearest_bits": nearest_bits.tolist(), "near_copy_bits": sorted(copy_bits)},
            "index": index_kind, "examples": examples}


def _image_key(pool_key: str) -> str:
    return pool_key.rsplit("_", 1)[0]  # <image key>_<face:02d>


def score(found: dict, truth: pd.DataFrame, pool_keys_by_image: dict, labeled: TestSet) -> dict | None:
    """Recall and precision of the audit on the labeled set against the planted truth (None without a plant)."""
    if truth.empty:
        return None
    plant = {r.image_key: r for r in truth.itertuples()}
    in_pool = {k: plant[_image_key(k)] for keys in pool_keys_by_image.values() for k in keys if _image_key(k) in plant}
    out = {"planted_images": {k: int((truth["planted"] == k).sum()) for k in ("identity", "near_copy")},
           "planted_in_pool": {k: sum(1 for p in in_pool.values() if p.planted == k) for k in ("identity", "near_copy")}}
    # near copies: a pool crop is right when it matched the very test image it copies
    flagged: dict[str, set] = defaultdict(set)
    for pk, t, *_ in found["near"].get(labeled.name, []):
        flagged[pk].add(labeled.keys[t])
    want = {k: p.planted_key for k, p in in_pool.items() if p.planted == "near_copy"}
    hit = [k for k, key in want.items() if key in flagged.get(k, set())]
    correct = [k for k, keys in flagged.items() if k in want and want[k] in keys]
    out["near_copy"] = {"truth": len(want), "found": len(hit), "flagged": len(flagged),
                        "recall": len(hit) / len(want) if want else None,
                        "precision": len(correct) / len(flagged) if flagged else None}
    # identities: every planted crop (identity plants and near copies) shows a test identity
    if labeled.identity_skip:
        out["identity"] = {"skipped": labeled.identity_skip}
        return out
    ident_of_row = labeled.identities
    matched: dict[str, set] = defaultdict(set)
    for pk, t, _ in found["same"].get(labeled.name, []):
        matched[pk].add(ident_of_row[t])
    want_id = {k: int(p.identity) for k, p in in_pool.items()}
    hit = [k for k, i in want_id.items() if i in matched.get(k, set())]
    correct = [k for k, ids in matched.items() if k in want_id and want_id[k] in ids]
    out["identity"] = {"truth": len(want_id), "found": len(hit), "flagged": len(matched),
                       "recall": len(hit) / len(want_id) if want_id else None,
                       "precision": len(correct) / len(matched) if matched else None}
    return out


def contaminated(found: dict) -> pd.DataFrame:
    """One row per contaminated test item: near copy and/or same identity, the closest pool crop's pHash bits and
    keypoint inliers (for a near copy: the pair with the most inliers), the highest cosine."""
    rows = {}
    for ts in found["sets"]:
        for kind, pairs in (("near", found["near"].get(ts.name, [])), ("same", found["same"].get(ts.name, []))):
            for pk, t, *v in pairs:
                r = rows.setdefault((ts.name, ts.keys[t]), {"dataset": ts.name, "key": ts.keys[t], "near_copy": False,
                                                           "identity": False, "hamming": None, "inliers": None,
                                                           "cosine": None, "pool_key": pk})
                if kind == "near":
                    bits, inl = v
                    score = (inl if inl is not None else 10_000, -bits)
                    best = ((r["inliers"] if r["inliers"] is not None else 10_000, -r["hamming"])
                            if r["near_copy"] else None)
                    if best is None or score > best:
                        r["hamming"], r["inliers"], r["pool_key"] = int(bits), inl, pk
                    r["near_copy"] = True
                else:
                    r["identity"] = True
                    r["cosine"] = max(r["cosine"] or -1.0, float(v[0]))
    df = pd.DataFrame(list(rows.values()), columns=CONTAMINATED_COLUMNS)
    df["hamming"] = df["hamming"].astype("Int64")
    df["inliers"] = df["inliers"].astype("Int64")
    df["cosine"] = df["cosine"].astype("Float64")
    return df.sort_values(["dataset", "key"], kind="stable").reset_index(drop=True)


POOL_COLUMNS = ["key", "near_copy", "identity", "dataset", "test_key"]


def flagged_pool(found: dict) -> pd.DataFrame:
    """One row per flagged pool crop (what ``train.exclude_contaminated`` leaves out): near copy and/or same
    identity of some test item, with the first test item it matched (by set order, then test row)."""
    rows: dict[str, dict] = {}
    for ts in found["sets"]:
        for kind, pairs in (("near_copy", found["near"].get(ts.name, [])), ("identity", found["same"].get(ts.name, []))):
            for pk, t, *_ in pairs:
                r = rows.setdefault(pk, {"key": pk, "near_copy": False, "identity": False, "dataset": ts.name,
                                         "test_key": ts.keys[t]})
                r[kind] = True
    df = pd.DataFrame(list(rows.values()), columns=POOL_COLUMNS)
    return df.sort_values("key", kind="stable").reset_index(drop=True)


def _figure(rep: Report, found: dict, n: int) -> bool:
    from PIL import Image, ImageDraw

    # near copies first (the pairs a reader checks by eye), then same-identity matches
    items = sorted(found["examples"].items(), key=lambda kv: (kv[1][2].startswith("cos"), kv[0]))[:n]
    if not items:
        return False
    by_name = {ts.name: ts for ts in found["sets"]}
    side = 112
    grid = Image.new("RGB", (2 * side * min(4, len(items)), (side + 14) * ((len(items) + 3) // 4)), "white")
    for i, ((name, pk), (im, t, label)) in enumerate(items):
        x, y = (i % 4) * 2 * side, (i // 4) * (side + 14)
        grid.paste(im.resize((side, side)), (x, y))
        grid.paste(by_name[name].images[t].resize((side, side)), (x + side, y))
        ImageDraw.Draw(grid).text((x + 2, y + side + 1), f"{label} | {by_name[name].keys[t]}"[:36], fill="black")
    setup_plotting()
    rep.image("pairs", grid)
    return True


def run(cfg: StageConfig, io: StageIO) -> int:
    try:
        found = audit(cfg, io)
    except evalsets.EvaluateInputError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    au = cfg["audit"]
    truth = found["planted"]
    labeled = found["sets"][0]
    table = contaminated(found)
    out = Path(io.outputs["contaminated"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, out)
    pool = flagged_pool(found)
    write_parquet(pool, io.outputs["pool"])
    rep = Report(io.outputs["report"], io.outputs["metrics"])
    per_set, rows = {}, []
    for ts in found["sets"]:
        near = found["near"].get(ts.name, [])
        same = found["same"].get(ts.name, [])
        t_near = {t for _, t, *_ in near}
        t_exact = {t for _, t, d, _ in near if d == 0}
        t_same = {t for _, t, _ in same}
        ids_same = {ts.identities[t] for t in t_same}
        n_ids = len({i for i in ts.identities if i not in evalsets.UNKNOWN_IDENTITY})
        per_set[ts.name] = {
            "test_images": len(ts.keys), "unreadable": len(ts.errors),
            "unreadable_examples": ts.errors[:5],
            "near_copy": {"test_images": len(t_near), "exact": len(t_exact), "pool_crops": len({p for p, *_ in near}),
                          "share": len(t_near) / len(ts.keys) if ts.keys else None},
            "identity": ({"skipped": ts.identity_skip} if ts.identity_skip else
                         {"test_images": len(t_same), "test_identities": len(ids_same), "identities": n_ids,
                          "pool_crops": len({p for p, _, _ in same}),
                          "share": len(ids_same) / n_ids if n_ids else None,
                          "index": found["index"].get(ts.name)}),
        }
        idn = per_set[ts.name]["identity"]
        rows.append([ts.name, len(ts.keys), len(ts.errors), len(t_near), len(t_exact),
                     "skipped" if ts.identity_skip else len(t_same),
                     "skipped" if ts.identity_skip else f"{idn['test_identities']} / {idn['identities']}"])
    rep.metric("pool_crops", found["pool_n"])
    rep.metric("pool_unreadable", len(found["pool_skipped"]))
    rep.metric("hamming", au["hamming"])
    rep.metric("candidates", au["candidates"])
    rep.metric("min_layout", au["min_layout"])
    rep.metric("min_inliers", au["min_inliers"])
    rep.metric("verified_pairs", found["verified"])
    rep.metric("cosine", found["cosine"])
    nb = found["phash"]["unrelated_nearest_bits"]
    rep.metric("phash", {"unrelated_nearest_min": next((b for b, n in enumerate(nb) if n), None),
                         "near_copy_min": min(found["phash"]["near_copy_bits"], default=None),
                         "near_copy_max": max(found["phash"]["near_copy_bits"], default=None)})
    pd.DataFrame({"bits": range(65), "pool_crops": nb}).to_csv(Path(io.outputs["report"]) / "phash_nearest.csv",
                                                                index=False)
    rep.metric("calibration", found["calibration"])
    rep.metric("embedder", found["embedder"])
    rep.metric("sets", per_set)
    rep.metric("set_names", [ts.name for ts in found["sets"]])
    rep.metric("contaminated_items", len(table))
    rep.metric("flagged_pool_crops", {"near_copy": int(pool["near_copy"].sum()), "identity": int(pool["identity"].sum()),
                                      "any": len(pool)})
    truth_scores = score(found, truth, found["planted_pool"], labeled)
    rep.metric("planted", truth_scores)
    rep.table("overlap", ["set", "test images", "unreadable", "near copies", "exact", "same identity (images)",
                          "identities in pool"], rows,
              caption=f"Test items of each evaluation set found in the pre-training pool ({found['pool_n']:,} crops): "
                      f"near copies (the {au['candidates']} nearest by colour layout, verified by at least "
                      f"{au['min_inliers']} agreeing keypoints, or a pHash within {au['hamming']} of 64 bits; exact = "
                      "0 bits) and the same identity (cosine >= "
                      f"{'n/a' if found['cosine'] is None else round(found['cosine'], 3)}, "
                      f"{found['embedder']['name'] or 'no embedder'})")
    rep.metric("figure", _figure(rep, found, au["examples"]))
    rep.save()
    log.info("audit: %d pool crops; %d contaminated test items; planted: %s", found["pool_n"], len(table), truth_scores)
    return 0
