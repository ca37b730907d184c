"""The contamination audit (stage audit): planted near copies and identities are found with known recall and
precision, the thresholds behave, a set without identities is skipped with its reason, an unreadable test image is
recorded. A tiny constructed case: the collect and labeled stages as they are (synthface.plant on), and caption
shards built from the truth (each face aligned by its true landmarks), so no detector or FLIP has to run; the
identity embedder is an oracle (one-hot of the true identity), whose misses the test chooses."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_stage, tiny_config
from PIL import Image

from facecaption.audit import features as F
from facecaption.audit import search as S
from facecaption.core.align import align
from facecaption.core.shards import ShardWriter, encode_jpeg, iter_samples, read_parquet

PLANT = {"identities": 3, "near_copies": 3}
REAL_EMBEDDER, REAL_CHOOSE = F.Embedder, F.choose_embedder  # the fixture swaps in the oracle


def _cfg(**over):
    base = {"synthface": {"num_shards": 1, "images_per_shard": 24, "plant": PLANT},
            "labeled": {"identities": {"train": 2, "val": 2, "test": 8}, "images_per_identity": 2},
            "align": {"size": 64}, "audit": {"cosine": 0.5}}  # the oracle's one-hot embeddings: 1 or 0
    return tiny_config(**_merge(base, over))


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def _captions_from_truth(cfg, shard="00000"):
    """results/captions/<shard>.tar: every true face of the crawl, aligned by its true landmarks."""
    truth = read_parquet(f"results/collect/{shard}.truth.parquet")
    size, scale = cfg["align"]["size"], cfg["align"]["scale"]
    with ShardWriter(f"results/captions/{shard}.tar") as w:
        for s in iter_samples(f"results/collect/{shard}.tar"):
            rgb = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
            for r in truth[truth["key"] == s["__key__"]].itertuples():
                crop, _ = align(rgb, np.asarray(r.landmarks).reshape(5, 2), size, scale)
                w.write({"__key__": f"{r.key}_{r.face:02d}", "jpg": encode_jpeg(crop), "txt": "a face"})
    return truth


def _digest(im):
    return hashlib.sha256(im.tobytes()).hexdigest()


class Oracle:
    """One-hot of the true identity of each image (looked up by its pixels); ``wrong``: pool crops given another."""

    identity_of: dict = {}

    def __init__(self, kind, path, batch=256):
        self.name = "oracle"

    def __call__(self, images):
        slot = {i: n for n, i in enumerate(sorted(set(self.identity_of.values())))}
        out = np.zeros((len(images), len(slot) + 1), np.float32)
        for i, im in enumerate(images):
            out[i, slot.get(self.identity_of.get(_digest(im)), len(slot))] = 1.0
        return out


@pytest.fixture
def planted(workdir, monkeypatch):
    cfg = _cfg()
    assert run_stage("collect", cfg, "00000") == 0
    assert run_stage("labeled", cfg) == 0
    truth = _captions_from_truth(cfg)
    size = cfg["align"]["size"]
    ident = {}
    for s in iter_samples("results/captions/00000.tar"):
        key, face = s["__key__"].rsplit("_", 1)
        row = truth[(truth["key"] == key) & (truth["face"] == int(face))].iloc[0]
        ident[_digest(F.open_rgb(s["jpg"], size))] = int(row["identity"])
    labels = read_parquet("results/labeled/test.parquet")
    images = {s["__key__"]: s["jpg"] for s in iter_samples("results/labeled/test.tar")}
    for k, i in zip(labels["key"], labels["identity"]):
        ident[_digest(F.open_rgb(images[k], size))] = int(i)
    Oracle.identity_of = ident
    monkeypatch.setattr(F, "Embedder", Oracle)
    monkeypatch.setattr(F, "choose_embedder", lambda au, faces, flip: ("oracle", None, "test oracle"))
    return cfg, truth


def _metrics():
    return json.loads(open("results/reports/audit/metrics.json").read())


def _expected_near(cfg, truth, au=None):
    """The near-copy scores by brute force (numpy, no faiss): every pool crop against its nearest test images by
    colour layout, verified by keypoints, or within the pHash radius of any test image."""
    au = {**cfg["audit"], **(au or {})}
    size, kp = cfg["align"]["size"], F.Keypoints()
    test = {s["__key__"]: F.open_rgb(s["jpg"], size) for s in iter_samples("results/labeled/test.tar")}
    keys = list(test)
    hashes = [F.phash(im) for im in test.values()]
    thumbs = np.stack([F.thumb(im) for im in test.values()])
    points = [kp.describe(im) for im in test.values()]
    source = {r.key: r.planted_key for r in truth.itertuples() if r.planted == "near_copy"}
    flagged = found = 0
    for s in iter_samples("results/captions/00000.tar"):
        im = F.open_rgb(s["jpg"], size)
        hp, sims = F.phash(im), thumbs @ F.thumb(im)
        near = {keys[t] for t in range(len(keys)) if F.hamming(hp, hashes[t]) <= au["hamming"]}
        mine = kp.describe(im)
        near |= {keys[t] for t in np.argsort(-sims, kind="stable")[:au["candidates"]]
                 if sims[t] >= au["min_layout"] and kp.inliers(mine, points[t]) >= au["min_inliers"]}
        key = source.get(s["__key__"].rsplit("_", 1)[0])
        flagged += bool(near)
        found += key in near
    return {"truth": len(source), "found": found, "flagged": flagged}


def test_planted_near_copies_and_identities_are_found(planted):
    cfg, truth = planted
    assert set(truth["planted"]) == {"", "identity", "near_copy"}
    assert run_stage("audit", cfg) == 0
    m = _metrics()
    p = m["planted"]
    assert p["planted_images"] == {"identity": 3, "near_copy": 3}
    assert p["planted_in_pool"] == {"identity": 3, "near_copy": 3}
    want = _expected_near(cfg, truth)
    assert {k: p["near_copy"][k] for k in want} == want
    assert p["near_copy"]["found"] == 3 and p["near_copy"]["precision"] == 1.0
    assert p["identity"]["recall"] == 1.0 and p["identity"]["precision"] == 1.0
    table = pd.read_parquet("results/audit/contaminated.parquet")
    near = set(table.loc[table["near_copy"], "key"])
    assert near <= set(truth.loc[truth["planted"] == "near_copy", "planted_key"]) | set(table["key"])
    # identity: every image of the 6 planted test identities (2 each) is contaminated
    assert table["identity"].sum() == 12
    assert m["sets"]["synthface"]["identity"]["test_identities"] == 6
    assert m["figure"] is True


def test_known_misses_give_known_recall(planted, monkeypatch):
    cfg, truth = planted
    first = truth[truth["planted"] == "identity"].iloc[0]
    # the oracle mistakes one planted identity crop for nobody: recall 5/6, precision still 1
    for d, i in list(Oracle.identity_of.items()):
        if i == int(first["identity"]) and d not in _test_digests(cfg):
            Oracle.identity_of[d] = -5
    assert run_stage("audit", cfg) == 0
    p = _metrics()["planted"]["identity"]
    assert (p["found"], p["truth"], p["flagged"]) == (5, 6, 5)
    assert p["recall"] == pytest.approx(5 / 6) and p["precision"] == 1.0


def _test_digests(cfg):
    return {_digest(F.open_rgb(s["jpg"], cfg["align"]["size"])) for s in iter_samples("results/labeled/test.tar")}


def test_near_copy_thresholds(planted):
    cfg, truth = planted
    for au in ({"min_inliers": 100_000}, {"min_inliers": 100_000, "hamming": 63}, {"candidates": 1, "min_layout": 0.99}):
        assert run_stage("audit", _merge(cfg, {"audit": au})) == 0
        got = _metrics()["planted"]["near_copy"]
        assert {k: got[k] for k in ("truth", "found", "flagged")} == _expected_near(cfg, truth, au)
        if au.get("hamming") == 63:  # every hash is within 63 bits: everything is a copy
            assert got["recall"] == 1.0 and got["flagged"] == _metrics()["pool_crops"]
            assert got["precision"] == pytest.approx(3 / got["flagged"], rel=1e-5)
        else:  # nothing verified: the planted near copies are not exact copies
            assert got["found"] == 0


def test_identity_threshold_calibrated_on_training_identities(planted):
    """audit.cosine: auto - with the oracle, different identities never match (cosine 0) and the same always do
    (1): the threshold lands just above 0 and finds every planted identity."""
    cfg, truth = planted
    size = cfg["align"]["size"]
    labels = read_parquet("results/labeled/train.parquet")
    images = {s["__key__"]: s["jpg"] for s in iter_samples("results/labeled/train.tar")}
    for k, i in zip(labels["key"], labels["identity"]):
        Oracle.identity_of[_digest(F.open_rgb(images[k], size))] = int(i)
    assert run_stage("audit", _merge(cfg, {"audit": {"cosine": "auto"}})) == 0
    m = _metrics()
    assert 0 < m["calibration"]["threshold"] < 1e-3
    assert m["calibration"]["true_match_rate"] == 1.0 and m["calibration"]["pair_false_matches"] == 0.0
    assert m["calibration"]["images"] == len(labels)
    assert m["planted"]["identity"]["recall"] == 1.0 and m["planted"]["identity"]["precision"] == 1.0


def test_phash_keypoints_and_search_thresholds():
    from facecaption.synthface.plant import perturb, render_labeled

    img, face = render_labeled(0, 30_000_001, 0, 256)
    copy = Image.open(io.BytesIO(perturb(img, np.random.default_rng(1), 90))).convert("RGB")
    crops = [Image.fromarray(align(np.asarray(x), face["landmarks"], 64, 0.6)[0]) for x in (img, copy)]
    other, oface = render_labeled(0, 30_000_002, 0, 256)
    crops.append(Image.fromarray(align(other, oface["landmarks"], 64, 0.6)[0]))
    h = np.stack([F.phash(c) for c in crops])
    index = S.binary_index(h[:1])
    d_copy, d_other = F.hamming(h[0], h[1]), F.hamming(h[0], h[2])
    assert d_copy < d_other
    assert S.hamming_pairs(index, h, 0) == [(0, 0, 0)]
    assert [q for q, _, _ in S.hamming_pairs(index, h, d_copy)] == [0, 1]
    kp = F.Keypoints()
    pts = [kp.describe(c) for c in crops]
    assert kp.inliers(pts[0], pts[1]) > 2 * kp.inliers(pts[0], pts[2])  # the copy: one geometry explains it
    sims, rows = S.nearest(S.embedding_index(np.stack([F.thumb(c) for c in crops[1:]]), "flat")[0],
                           F.thumb(crops[0])[None], 2)
    assert rows[0].tolist() == [0, 1] and sims[0, 0] > sims[0, 1]
    e = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0, 0], [0.8, 0.6, 0]], np.float32)
    flat, kind = S.embedding_index(e)
    assert kind == "flat"
    assert [(a, b) for a, b, _ in S.cosine_pairs(flat, q, 0.9)] == [(0, 0)]
    assert [(a, b) for a, b, _ in S.cosine_pairs(flat, q, 0.8)] == [(0, 0), (1, 0)]


def test_ivf_index_finds_the_same_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ivf, kind = S.embedding_index(x, "auto", ivf_above=1000, nprobe=256)
    assert kind == "ivf"
    flat, _ = S.embedding_index(x, "flat")
    q = x[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert sorted(S.cosine_pairs(ivf, q, 0.9))[:5] == sorted(S.cosine_pairs(flat, q, 0.9))[:5]


def _csv_set(root, unreadable: bool):
    """A CSV evaluation set without identities: two labeled test crops copied (one exact), maybe a broken file."""
    root.mkdir(parents=True)
    rows = ["image,split,Smiling"]
    images = {s["__key__"]: s["jpg"] for s in iter_samples("results/labeled/test.tar")}
    for i, (k, jpg) in enumerate(sorted(images.items())[:3]):
        (root / f"{k}.jpg").write_bytes(jpg)
        rows.append(f"{k}.jpg,{['train', 'val', 'test'][i]},1")
    for k, jpg in sorted(images.items())[3:6]:
        (root / f"t_{k}.jpg").write_bytes(jpg)
        rows.append(f"t_{k}.jpg,test,-1")
    if unreadable:
        (root / "broken.jpg").write_bytes(b"<html>not an image</html>")
        rows.append("broken.jpg,test,1")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")


def test_a_set_without_identities_is_skipped_and_an_unreadable_image_recorded(planted, workdir):
    cfg, _ = planted
    _csv_set(workdir / "data" / "extra", unreadable=True)
    cfg = _merge(cfg, {"evaluate": {"datasets": [{"name": "extra", "format": "csv", "path": "data/extra"}]}})
    assert run_stage("audit", cfg) == 0
    m = _metrics()["sets"]["extra"]
    assert m["identity"]["skipped"].startswith("no identity labels")
    assert m["unreadable"] == 1 and m["unreadable_examples"][0]["key"] == "broken.jpg"
    assert m["unreadable_examples"][0]["reason"].startswith("unreadable_image")
    assert m["test_images"] == 4  # the third copied crop (split test) and the three t_ crops
    assert m["near_copy"]["exact"] == 0  # the labeled test crops are not in the pool
    # the synthface set still has its identity audit
    assert "skipped" not in _metrics()["sets"]["synthface"]["identity"]


def test_no_training_identities_skips_the_identity_audit_with_its_reason(planted):
    """CelebA without its identity file: the labeled split has no identities to set the threshold on; the
    identity audit is skipped with the reason, the near-copy audit runs."""
    cfg, _ = planted
    labels = read_parquet("results/labeled/train.parquet")
    labels["identity"] = -1
    labels.to_parquet("results/labeled/train.parquet")
    assert run_stage("audit", _merge(cfg, {"audit": {"cosine": "auto"}})) == 0
    m = _metrics()
    assert m["calibration"]["skipped"].startswith("the labeled training split has no identities")
    assert m["sets"]["synthface"]["identity"]["skipped"].startswith("no identity threshold")
    assert m["planted"]["near_copy"]["found"] == 3


def test_training_leaves_out_the_flagged_crops(planted):
    """train.exclude_contaminated: the audit's flagged pool crops are skipped by the training stream and counted as
    "contaminated"; the others all arrive. The DAG: training then waits for the audit, whose embedder is no longer
    this run's FLIP; a config asking FLIP for identities then stops with one line naming the key."""
    from facecaption import workflow as W
    from facecaption.core import config as fc_config
    from facecaption.train import excluded_keys
    from facecaption.train.data import SKIP_REASONS, CaptionStream

    cfg, truth = planted
    assert run_stage("audit", cfg) == 0
    pool = pd.read_parquet("results/audit/pool.parquet")
    near = set(pool.loc[pool["near_copy"], "key"])
    assert len(near) == 3 and {k.rsplit("_", 1)[0] for k in near} == set(truth.loc[truth["planted"] == "near_copy", "key"])
    assert excluded_keys("results/audit/pool.parquet", "near_copy") == near
    assert excluded_keys("results/audit/pool.parquet", "any") == set(pool["key"])
    assert excluded_keys("results/audit/pool.parquet", "none") == frozenset()
    every = [s["__key__"] for s in iter_samples("results/captions/00000.tar")]
    ds = CaptionStream(["results/captions/00000.tar"], tokenizer=list, image_size=32, batch_size=1, seed=0,
                       train=False, exclude=frozenset(near))
    seen, skipped = [], np.zeros(len(SKIP_REASONS), np.int64)
    for _, _, sk, keys in ds:
        seen += keys
        skipped += sk.numpy()
    assert sorted(seen) == sorted(set(every) - near)
    assert skipped[SKIP_REASONS.index("contaminated")] == len(near)

    shards = ["00000"]
    assert "contaminated_pool" not in W.stage_inputs("train", cfg, shards)
    assert W.stage_inputs("audit", cfg, shards)["model"] == ["results/train/flip.pt"]
    excl = fc_config.validate(_merge(cfg, {"train": {"exclude_contaminated": "near_copy"}}))
    assert W.stage_inputs("train", excl, shards)["contaminated_pool"] == ["results/audit/pool.parquet"]
    assert "model" not in W.stage_inputs("audit", excl, shards)  # no cycle: the audit does not wait for training
    with_ckpt = fc_config.validate(_merge(excl, {"audit": {"checkpoint": "old/flip.pt"}}))
    assert W.stage_inputs("audit", with_ckpt, shards)["model"] == ["old/flip.pt"]
    with pytest.raises(fc_config.ConfigError, match="^config error: train.exclude_contaminated: "):
        fc_config.validate(_merge(cfg, {"train": {"exclude_contaminated": "any"}, "audit": {"embedder": "flip"}}))


def _mean_colour_onnx(path):
    """A stand-in recognition model in insightface's layout (input ``input.1``, N×3×112×112): the embedding is the
    image's mean colour, so the test knows every vector."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["683"], axis=1)],
        "mean_colour", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_the_insightface_embedder_runs_the_packs_recognition_onnx(planted, monkeypatch, workdir):
    """audit.embedder: insightface reads <faces.insightface.model_dir>/<pack>/<recognition_model> with onnxruntime,
    with ArcFace's input (112 px RGB, (x - 127.5) / 127.5); the vectors are L2-normalised; a missing file names it."""
    cfg, _ = planted
    monkeypatch.setattr(F, "Embedder", REAL_EMBEDDER)  # the real embedder, not the fixture's oracle
    monkeypatch.setattr(F, "choose_embedder", REAL_CHOOSE)
    _mean_colour_onnx(workdir / "models" / "buffalo_l" / "w600k_r50.onnx")
    au = {**cfg["audit"], "embedder": "insightface"}
    faces = {"insightface": {"model_dir": str(workdir / "models"), "pack": "buffalo_l"}}
    kind, path, why = F.choose_embedder(au, faces, None)
    assert kind == "insightface" and path.endswith("buffalo_l/w600k_r50.onnx") and why.endswith("found")
    emb = F.Embedder(kind, path, batch=4)
    ims = [F.open_rgb(s["jpg"], 64) for s in list(iter_samples("results/labeled/test.tar"))[:5]]
    want = np.stack([((np.asarray(im.resize((112, 112), Image.BILINEAR), np.float32) - 127.5) / 127.5).mean((0, 1))
                     for im in ims])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(emb(ims), want, atol=1e-5) and emb.name == "insightface w600k_r50.onnx"
    missing = F.choose_embedder(au, {"insightface": {"model_dir": str(workdir / "none")}}, None)
    assert missing[0] is None and "none/buffalo_l/w600k_r50.onnx does not exist" in missing[2]
    # the stage with it: the identity audit runs with the pack's model
    cfg = _merge(cfg, {"audit": {"embedder": "insightface", "cosine": 0.999999}, "faces": faces})
    assert run_stage("audit", cfg) == 0
    m = _metrics()
    assert m["embedder"]["name"] == "insightface w600k_r50.onnx" and "skipped" not in m["sets"]["synthface"]["identity"]
