"""Stage evaluate: metrics on hand-made cases, split disjointness, published-format parsing, bad input, and
one in-process run of the stage on the tiny config (labeled splits, hand-made caption shards, a tiny FLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_stage, tiny_config
from PIL import Image

from facecaption.core import config as fc_config
from facecaption.core.shards import ShardWriter, iter_samples, read_parquet
from facecaption.evaluate import data as D
from facecaption.evaluate import metrics as M
from facecaption.evaluate import probe as P
from facecaption.evaluate.data import EvaluateInputError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # OMP_NUM_THREADS from conftest comes after torch was imported; on a loaded 2-core machine two threads
    # make the small encoders several times slower
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- metrics ---------------------------------------------------------------------------------------------
def test_recall_perfect_and_reversed_ranking():
    n = 20
    sim = np.eye(n)
    pos = np.eye(n, dtype=bool)
    assert M.recall_at_k(sim, pos, (1, 5, 10)) == {1: 1.0, 5: 1.0, 10: 1.0}
    # the positive scored worst of all: never within the top 10 of 20
    assert M.recall_at_k(-sim, pos, (1, 5, 10)) == {1: 0.0, 5: 0.0, 10: 0.0}


def test_recall_random_ranking_is_k_over_n():
    rng = np.random.default_rng(0)
    n = 400
    sim = rng.random((n, n))
    r = M.recall_at_k(sim, np.eye(n, dtype=bool), (1, 5, 10))
    for k, v in r.items():
        assert abs(v - k / n) < 3 * np.sqrt(k / n / n) + 1e-9 + 0.01


def test_recall_ties_count_against_the_query():
    sim = np.zeros((5, 5))  # a constant scorer gets no credit
    assert M.recall_at_k(sim, np.eye(5, dtype=bool), (1, 4))[1] == 0.0
    assert M.recall_at_k(sim, np.eye(5, dtype=bool), (5,))[5] == 1.0


def test_retrieval_merges_identical_captions():
    img = np.eye(4, dtype=np.float32)
    img[3] = img[2]  # faces 2 and 3 look alike and share a caption
    txt = img.copy()
    caps = ["a", "b", "c", "c"]
    r = M.retrieval(img, txt, caps)  # three candidates; caption "c" has two positives
    assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == 1.0
    img[3] = -img[2]  # face 3 now scores worst with its caption
    r = M.retrieval(img, txt, caps)
    assert r["i2t_r1"] == 0.75 and r["t2i_r1"] == 1.0


def test_probe_learns_a_separable_attribute_and_majority():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0.5], 1).astype(np.uint8)
    res = P.fit_and_score((x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:]), [1e-3, 1e-1], 50)
    assert res["test_accuracy"].min() > 0.9
    assert P.majority(y[:200], y[250:])[1] == pytest.approx((y[250:, 1] == 0).mean())
    a = P.subset(1000, 0.01, 0, "d", 0)
    assert len(a) == 10 and len(set(a)) == 10
    assert not np.array_equal(a, P.subset(1000, 0.01, 0, "d", 1))
    assert np.array_equal(a, P.subset(1000, 0.01, 0, "d", 0))


# -- splits ----------------------------------------------------------------------------------------------
def _split(keys, ids):
    return D.Split(list(keys), [k.encode() for k in keys], np.zeros((len(keys), 1), np.uint8), list(ids))


def test_split_disjointness_is_checked():
    ok = D.LabeledSet("x", ["A"], {"train": _split("ab", [1, 2]), "val": _split("c", [3]), "test": _split("d", [4])})
    assert D.check_disjoint(ok) == {"train_val": 0, "train_test": 0, "val_test": 0}
    bad = D.LabeledSet("x", ["A"], {"train": _split("ab", [1, 2]), "val": _split("c", [3]), "test": _split("d", [2])})
    with pytest.raises(EvaluateInputError, match="^x: splits train and test share 1 identity "):
        D.check_disjoint(bad)
    bad = D.LabeledSet("x", ["A"], {"train": _split("ab", [1, 2]), "val": _split("b", [3]), "test": _split("d", [4])})
    with pytest.raises(EvaluateInputError, match="^x: splits train and val share 1 image key"):
        D.check_disjoint(bad)


# -- published formats -----------------------------------------------------------------------------------
ATTRS = ["Eyeglasses", "Male", "Smiling"]


def _celeba_folder(root: Path, n: int = 12, fmt: str = "celeba", parts=(0, 1, 2)) -> Path:
    images = root / ("img_align_celeba" if fmt == "celeba" else "lfw")
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names, lines, part = [], [str(n), " ".join(ATTRS)], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg" if fmt == "celeba" else f"Person_{i // 2}_{i % 2 + 1:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(images / name)
        vals = ["1" if (i >> j) & 1 else "-1" for j in range(len(ATTRS))]
        lines.append(f"{name}  " + " ".join(vals))
        part.append(f"{name} {parts[(i // 2) % len(parts)]}")
        names.append(name)
    attr, partition = ("list_attr_celeba.txt", "list_eval_partition.txt") if fmt == "celeba" else \
        ("list_attr_lfw.txt", "list_eval_partition_lfw.txt")
    (root / attr).write_text("\n".join(lines) + "\n")
    (root / partition).write_text("\n".join(part) + "\n")
    return root


def test_celeba_format_parsing(tmp_path):
    root = _celeba_folder(tmp_path / "celeba")
    ds = D.read_dataset({"name": "CelebA", "format": "celeba", "path": str(root)})
    assert ds.attributes == ATTRS
    assert ds.sizes() == {"train": 4, "val": 4, "test": 4}
    assert ds.splits["train"].keys == ["000001", "000002", "000007", "000008"]
    # 000002 (i = 1): Eyeglasses 1, Male -1, Smiling -1
    assert ds.splits["train"].labels[1].tolist() == [1, 0, 0]
    from facecaption.evaluate.encoders import open_image

    im = open_image(ds.splits["test"].sources[0])
    assert im.size == (178, 178)


def test_lfwa_without_val_carves_identities_from_train(tmp_path):
    root = _celeba_folder(tmp_path / "lfwa", n=20, fmt="lfwa", parts=(0, 2))
    ds = D.read_dataset({"name": "LFWA", "format": "lfwa", "path": str(root), "val_share": 0.3}, seed=0)
    assert ds.sizes()["val"] > 0
    assert ds.sizes()["train"] + ds.sizes()["val"] == 10 and ds.sizes()["test"] == 10
    D.check_disjoint(ds)
    assert not set(ds.splits["val"].keys) & set(ds.splits["test"].keys)


def test_csv_folder(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["image,identity,Eyeglasses,Wearing_Hat"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
        rows.append(f"f{i}.png,p{i // 3},{1 if i % 2 else -1},{i % 3 == 0:d}")
    (tmp_path / "attributes.csv").write_text("\n".join(rows) + "\n")
    ds = D.read_dataset({"name": "mine", "format": "csv", "path": str(tmp_path)}, seed=0)
    assert ds.attributes == ["Eyeglasses", "Wearing_Hat"]
    assert sum(ds.sizes().values()) == 30
    D.check_disjoint(ds)


@pytest.mark.parametrize("damage, expected", [
    ("missing_attr", r"list_attr_celeba.txt: missing attribute file"),
    ("bad_value", r"list_attr_celeba.txt:5: attribute value '0' is not -1 or 1"),
    ("extra_partition", r"list_eval_partition.txt:13: 999999.jpg has no row in list_attr_celeba.txt"),
    ("missing_row", r"list_attr_celeba.txt:14: 000012.jpg is not in list_eval_partition.txt"),
    ("missing_image", r"list_eval_partition.txt:3: image 000003.jpg is missing"),
    ("escaping_name", r"list_attr_celeba.txt:5: image name '../outside.jpg' leaves the image folder"),
])
def test_bad_celeba_input_names_file_and_line(tmp_path, damage, expected):
    root = _celeba_folder(tmp_path / "celeba")
    attr, part = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    if damage == "missing_attr":
        attr.unlink()
    elif damage == "bad_value":
        lines = attr.read_text().splitlines()
        lines[4] = lines[4].replace("-1", "0", 1)
        attr.write_text("\n".join(lines) + "\n")
    elif damage == "extra_partition":
        part.write_text(part.read_text() + "999999.jpg 0\n")
    elif damage == "missing_row":
        part.write_text("\n".join(part.read_text().splitlines()[:-1]) + "\n")
    elif damage == "missing_image":
        (root / "img_align_celeba" / "000003.jpg").unlink()
    elif damage == "escaping_name":  # a listed name that would read a file beside the image folder
        Image.new("RGB", (8, 8)).save(root / "outside.jpg")
        for f in (attr, part):
            f.write_text(f.read_text().replace("000003.jpg", "../outside.jpg"))
    with pytest.raises(EvaluateInputError, match=expected):
        D.read_dataset({"name": "CelebA", "format": "celeba", "path": str(root)})


def test_bad_csv_value_names_file_and_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "attributes.csv").write_text("image,Male\na.png,1\na.png,2\n")
    with pytest.raises(EvaluateInputError, match=r"attributes.csv:3: attribute Male value '2'"):
        D.read_dataset({"name": "c", "format": "csv", "path": str(tmp_path)})


@pytest.mark.parametrize("name", ["../secret.png", "/etc/hostname", "sub/../../secret.png"])
def test_csv_image_outside_the_folder_is_refused(tmp_path, name):
    root = tmp_path / "ds"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (root / "attributes.csv").write_text(f"image,Male\na.png,1\n{name},-1\n")
    with pytest.raises(EvaluateInputError, match=r"attributes.csv:3: image '.*' leaves the dataset folder"):
        D.read_dataset({"name": "c", "format": "csv", "path": str(root)})


@pytest.mark.parametrize("key", ["images", "attributes", "partition"])
def test_dataset_subpaths_stay_inside_the_dataset_folder(key):
    from conftest import tiny_config

    from facecaption.core.config import ConfigError

    spec = {"name": "c", "format": "celeba", "path": "/data/celeba", key: "../elsewhere"}
    with pytest.raises(ConfigError, match=rf"evaluate.datasets.0.{key}: \"../elsewhere\" is not allowed; allowed: .* inside path"):
        tiny_config(evaluate={"datasets": [spec]})


# -- the stage -------------------------------------------------------------------------------------------
CAPTION_WORDS = {"Male": ("a man", "a woman"), "Eyeglasses": ("with glasses", ""), "Smiling": ("smiling", ""),
                 "Wearing_Hat": ("wearing a hat", ""), "Black_Hair": ("with black hair", "")}


def _caption(row) -> str:
    return " ".join(w for a, (p, n) in CAPTION_WORDS.items() for w in [p if row[a] else n] if w)


def make_stage_inputs(root: Path) -> dict:
    """In ``root``: labeled splits (tiny config), caption shards made from labeled faces (the last shard is
    the held-out one) and a tiny untrained 'FLIP' checkpoint. Returns the config."""
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = tiny_config(labeled={"identities": {"train": 40, "val": 10, "test": 20}})
        assert run_stage("labeled", cfg) == 0
        df = read_parquet("results/labeled/test.parquet")
        images = {s["__key__"]: s["jpg"] for s in iter_samples("results/labeled/test.tar")}
        Path("results/captions").mkdir(parents=True)
        for shard, part in (("00000", df.iloc[:16]), ("00001", df.iloc[16:])):
            with ShardWriter(f"results/captions/{shard}.tar") as w:
                for _, row in part.iterrows():
                    w.write({"__key__": row["key"], "jpg": images[row["key"]], "txt": _caption(row)})
        from facecaption.core import openclip as tm

        arch = tm.arch_for(cfg["train"]["arch"], cfg["align"]["size"])
        model, _ = tm.create(arch, seed=1)
        Path("results/train").mkdir(parents=True)
        tm.save_checkpoint(model, arch, "results/train/flip.pt")
        write_split(cfg)  # as the train stage writes it (facecaption.core.split)
    finally:
        os.chdir(cwd)
    return cfg


def write_split(cfg: dict, val_shards: int | None = None) -> dict:
    """results/train/split.json for the run's caption shards, through the function the train stage uses."""
    from facecaption import workflow as W
    from facecaption.core import split

    pairs = W.stage_inputs("evaluate", cfg, ["00000", "00001"])["pairs"]
    path = W.stage_outputs("train")["split"]
    split.make(pairs, cfg["train"]["val_shards"] if val_shards is None else val_shards).write(path)
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return root, make_stage_inputs(root)


@pytest.fixture
def in_stage_dir(stage_inputs, monkeypatch):
    root, cfg = stage_inputs
    monkeypatch.chdir(root)
    return cfg


def _fast(cfg, **ev):
    cfg = json.loads(json.dumps(cfg))
    cfg["evaluate"].update({"label_fractions": [0.1, 1.0], "seeds": 2, "weight_decays": [0.1, 0.001],
                            "probe_iterations": 30, **ev})
    return cfg


def test_stage_writes_report(in_stage_dir, tmp_path):
    cfg = _fast(in_stage_dir)
    assert run_stage("evaluate", cfg) == 0
    rep = Path("results/reports/evaluate")
    m = json.loads((rep / "metrics.json").read_text())
    assert m["models"] == ["FLIP", "random init"]
    assert m["default_dataset"] == "synthface"
    assert m["datasets"]["synthface"]["train"] == 80 and m["datasets"]["synthface"]["test"] == 40
    p = m["probe"]["synthface"]
    assert set(p) == {"FLIP", "random init", "majority class"}
    assert set(p["FLIP"]) == {"10", "100"}
    assert 0 <= p["FLIP"]["10"]["mean"] <= 100 and p["FLIP"]["100"]["std"] == 0
    assert len(p["FLIP"]["10"]["runs"]) == 2
    assert m["retrieval_faces"] == 24  # the last caption shard only (train.val_shards = 1)
    assert m["caption_shards"] == ["results/captions/00001.tar"] and m["retrieval_held_out"] is True
    assert m["retrieval_note"] == ""
    assert set(m["retrieval"]["FLIP"]) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}
    assert "probe_beats_random" in m["acceptance"] and "retrieval_beats_random" in m["acceptance"]
    assert len(m["per_attribute"]["synthface"]["FLIP"]) == 39
    for t in ("probe", "retrieval", "zeroshot"):
        table = json.loads((rep / "tables" / f"{t}.json").read_text())
        assert table["rows"]
    probe = json.loads((rep / "tables" / "probe.json").read_text())
    assert probe["quoted_rows"] and all(probe["rows"][i][0].endswith("(paper)") for i in probe["quoted_rows"])
    assert (rep / "figures" / "per_attribute.png").stat().st_size > 1000
    assert (rep / "probe_runs.csv").exists() and (rep / "retrieval_runs.csv").exists()
    # no choice sees a test split, and what was checked is recorded
    assert m["split_overlap"]["synthface"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert m["split_checks"]["synthface"]["images_hashed"] == 140 and m["split_checks"]["synthface"]["identities_known"] == 140
    assert "validation" in m["choices"]["probe_weight_decay"]
    # a grid of two values has no interior: every choice is on its edge, and the table says so
    assert m["wd_at_edge"] is True and p["FLIP"]["100"]["wd_at_edge"] is True and m["wd_edges"]
    assert probe["columns"][-1] == "wd_at_edge" and probe["rows"][0][-1] == "10 %, 100 %"
    choices = json.loads((rep / "tables" / "probe_choices.json").read_text())
    assert choices["rows"] and all(r[-1].startswith("yes") for r in choices["rows"])
    # slices of the probe's test faces (retrieval slices need the attribute tables: not given here)
    g = m["slices"]["probe"]["synthface"]["FLIP"]["Male+Young"]
    assert sum(v["n"] for v in g["slices"].values()) == 40
    assert all(("mean" in v) == (v["n"] >= 20) for v in g["slices"].values())
    assert "retrieval" in m["slices"]["skipped"] and m["slices"]["retrieval"] == {}
    flat = json.loads(Path("results/metrics/evaluate.json").read_text())
    assert "retrieval.FLIP.t2i_r5.mean" in flat and "probe.synthface.FLIP.10.mean" in flat  # the keys others read
    first = (rep / "metrics.json").read_bytes()
    # the paper section compiles against these artifacts
    import shutil

    import typst

    shutil.copytree(Path(__file__).resolve().parents[1] / "paper", tmp_path / "paper")
    (tmp_path / "results" / "reports").mkdir(parents=True)
    shutil.copytree(rep, tmp_path / "results" / "reports" / "evaluate")
    typst.compile(str(tmp_path / "paper" / "paper.typ"), output=str(tmp_path / "p.pdf"), root=str(tmp_path),
                  sys_inputs={"sections": "evaluate"})
    assert (tmp_path / "p.pdf").stat().st_size > 1000
    # deterministic: same inputs, same metrics
    assert run_stage("evaluate", cfg) == 0
    assert (rep / "metrics.json").read_bytes() == first


def test_few_shards_retrieval_never_scores_training_captions(in_stage_dir):
    """Two caption shards and train.val_shards = 2: the train stage holds nothing out (it trains on both), so
    evaluation has no held-out captions: no retrieval, and the metrics say why (it used to take the last
    val_shards caption shards regardless, i.e. score retrieval on the training data)."""
    cfg = _fast(in_stage_dir, random_baseline=False, zero_shot=False, seeds=1, label_fractions=[1.0])
    cfg["train"]["val_shards"] = 2
    written = write_split(cfg)
    try:
        assert written["held_out_shards"] == [] and len(written["train_shards"]) == 2
        assert run_stage("evaluate", cfg) == 0
        m = json.loads(Path("results/reports/evaluate/metrics.json").read_text())
        assert m["retrieval_faces"] == 0 and m["caption_shards"] == [] and m["retrieval"] == {}
        assert m["retrieval_held_out"] is False and "no held-out caption shards" in m["retrieval_note"]
        assert not Path("results/reports/evaluate/retrieval_runs.csv").exists()
        assert not Path("results/reports/evaluate/tables/retrieval.json").exists()
        flat = json.loads(Path("results/metrics/evaluate.json").read_text())  # the DVC metrics
        assert not any(k.startswith("retrieval.") for k in flat)
    finally:
        write_split(in_stage_dir)


def test_retrieval_uses_exactly_the_split_keys(in_stage_dir):
    """The held-out keys of split.json, not whatever else a held-out shard holds; a split of other shards stops."""
    cfg = _fast(in_stage_dir, random_baseline=False, zero_shot=False, seeds=1, label_fractions=[1.0])
    path = Path("results/train/split.json")
    original = path.read_text()
    data = json.loads(original)
    try:
        path.write_text(json.dumps({**data, "held_out_keys": data["held_out_keys"][:10]}))
        assert run_stage("evaluate", cfg) == 0
        m = json.loads(Path("results/reports/evaluate/metrics.json").read_text())
        assert m["retrieval_faces"] == 10
        path.write_text(json.dumps({**data, "held_out_shards": ["results/captions/00007.tar"]}))
        assert run_stage("evaluate", cfg) == 2
    finally:
        path.write_text(original)


def test_missing_baseline_stops_with_one_line(in_stage_dir, capsys):
    cfg = _fast(in_stage_dir, baselines=[{"name": "CLIP ViT-B/16", "arch": "ViT-B-16", "path": "/nowhere/clip.pt"}])
    assert run_stage("evaluate", cfg) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "evaluate: /nowhere/clip.pt: weights of baseline 'CLIP ViT-B/16' (evaluate.baselines) missing"


def test_missing_checkpoint_stops(in_stage_dir, capsys):
    cfg = _fast(in_stage_dir, checkpoint="results/train/none.pt")
    assert run_stage("evaluate", cfg) == 2
    assert "results/train/none.pt: FLIP checkpoint missing" in capsys.readouterr().err


def test_pooled_intermediate_features():
    from facecaption.evaluate import encoders as E

    enc = E.load("random", "FLIP-Tiny", None)
    images = [Image.new("RGB", (112, 112), c) for c in ("red", "green", "blue")]
    final = E.image_features(enc, images, batch=2)
    pooled = E.image_features(enc, images, batch=2, pooled_blocks=2)
    width = enc.model.visual.transformer.width
    assert final.shape == (3, 128) and pooled.shape == (3, 128 + 2 * width)
    np.testing.assert_allclose(pooled[:, :128], final, atol=1e-5)
    assert np.allclose(np.linalg.norm(final, axis=1), 1, atol=1e-5)


# -- folders from synthface.formats, aligned evaluation sets, config checks before any job runs ---------------
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """data/celeba and data/lfwa (the overlays' paths) as synthetic stand-ins in the published layouts."""
    from facecaption.synthface.formats import write_celeba, write_lfwa

    root = tmp_path_factory.mktemp("formats")
    celeba = write_celeba(root / "data" / "celeba", n_identities=10, images_per_identity=2, seed=1)
    write_lfwa(root / "data" / "lfwa", n_identities=8, images_per_identity=2, seed=1)
    return root, celeba


def test_celeba_with_landmarks_is_aligned_like_the_labeled_set(rendered):
    from facecaption.core.align import align
    from facecaption.core.celeba_files import read_landmarks
    from facecaption.evaluate.encoders import open_image

    root, truth = rendered
    path = root / "data" / "celeba"
    spec = {"name": "CelebA-20k", "format": "celeba", "path": str(path), "landmarks": "list_landmarks_align_celeba.txt"}
    ds = D.read_dataset(spec, seed=0, align={"size": 64, "scale": 0.6})
    points = read_landmarks(path / "list_landmarks_align_celeba.txt")
    key, source = ds.splits["test"].keys[0], ds.splits["test"].sources[0]
    assert isinstance(source, bytes)  # the aligned crop, JPEG-encoded as the labeled set's
    got = np.asarray(open_image(source))
    with Image.open(path / "img_align_celeba" / f"{key}.jpg") as im:
        expected, _ = align(np.asarray(im.convert("RGB")), points[f"{key}.jpg"], 64, 0.6)
    assert got.shape == (64, 64, 3) and np.abs(got.astype(int) - expected).mean() < 3
    # without landmarks: the middle square, as before
    plain = D.read_dataset({**spec, "landmarks": None}, seed=0)
    assert plain.splits["test"].sources[0][1] == "square"
    assert plain.sizes() == ds.sizes() and sum(ds.sizes().values()) == len(truth)
    # a listed image without landmarks stops with the file
    lm = path.parent / "celeba_lm"
    import shutil

    shutil.copytree(path, lm)
    lines = (lm / "list_landmarks_align_celeba.txt").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"{key}.jpg")]
    (lm / "list_landmarks_align_celeba.txt").write_text("\n".join(kept) + "\n")
    with pytest.raises(EvaluateInputError, match=rf"landmarks_align_celeba.txt: image {key}.jpg .* has no landmarks"):
        D.read_dataset({**spec, "path": str(lm)}, seed=0)


def _overlays():
    from facecaption.core import config as fc_config

    return fc_config.load([ROOT / "config.yaml", ROOT / "config" / "celeba.yaml", ROOT / "config" / "lfwa.yaml"])


def test_shipped_overlays_combine(rendered, monkeypatch):
    root, _ = rendered
    monkeypatch.chdir(root)
    cfg = _overlays()
    D.check_datasets(cfg)
    names = [D.labeled_set_name(cfg), *[d["name"] for d in cfg["evaluate"]["datasets"]]]
    assert names == ["CelebA", "LFWA", "CelebA-20k"]
    for spec in cfg["evaluate"]["datasets"]:  # and the stage's reader takes them
        ds = D.read_dataset(spec, cfg["seed"], cfg["align"])
        assert all(n > 0 for n in ds.sizes().values())
    # each overlay alone passes too
    from facecaption.core import config as fc_config

    for overlay in ("celeba.yaml", "lfwa.yaml"):
        D.check_datasets(fc_config.load([ROOT / "config.yaml", ROOT / "config" / overlay]))


def _check(cfg) -> str:
    from facecaption.core.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        D.check_datasets(cfg)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("config error: ")
    return msg


def test_check_datasets_missing_folders_name_the_key(rendered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing under data/
    cfg = _overlays()
    assert _check(cfg).startswith("config error: labeled.celeba_dir: data/celeba does not exist; download CelebA")
    assert "python -m facecaption.synthface.formats celeba data/celeba" in _check(cfg)
    cfg["labeled"]["celeba_dir"] = None
    assert _check(cfg).startswith("config error: labeled.celeba_dir: not set, but labeled.source is celeba")
    cfg["labeled"]["source"] = "synthface"
    msg = _check(cfg)
    assert msg.startswith("config error: evaluate.datasets[0].path: data/lfwa does not exist; get LFWA")
    assert msg.endswith("python -m facecaption.synthface.formats lfwa data/lfwa")
    root, _ = rendered
    import shutil

    shutil.copytree(root / "data" / "lfwa", tmp_path / "data" / "lfwa")
    assert _check(cfg).startswith("config error: evaluate.datasets[1].path: data/celeba does not exist")
    shutil.copytree(root / "data" / "celeba", tmp_path / "data" / "celeba")
    D.check_datasets(cfg)
    # a file or folder inside a dataset folder
    for key, rel, spec_key in (("images", "lfw", 0), ("attributes", "list_attr_lfw.txt", 0),
                               ("partition", "list_eval_partition_lfw.txt", 0),
                               ("landmarks", "list_landmarks_align_celeba.txt", 1)):
        broken = json.loads(json.dumps(cfg))
        broken["evaluate"]["datasets"][spec_key][key] = "nowhere"
        folder = "data/lfwa" if spec_key == 0 else "data/celeba"
        assert _check(broken).startswith(f"config error: evaluate.datasets[{spec_key}].{key}: {folder}/nowhere does "
                                         f"not exist; ")
    # the defaults of a format are checked too
    (tmp_path / "data" / "celeba" / "list_eval_partition.txt").rename(tmp_path / "part.txt")
    assert _check(cfg).startswith("config error: evaluate.datasets[1].partition: data/celeba/list_eval_partition.txt "
                                  "does not exist (the celeba default); ")
    cfg["labeled"]["source"] = "celeba"
    cfg["labeled"]["celeba_dir"] = "data/celeba"
    assert _check(cfg).startswith("config error: labeled.celeba_dir: data/celeba/list_eval_partition.txt does not "
                                  "exist")
    (tmp_path / "part.txt").rename(tmp_path / "data" / "celeba" / "list_eval_partition.txt")
    cfg["labeled"]["celeba_landmarks"] = "lm.txt"
    assert _check(cfg).startswith("config error: labeled.celeba_landmarks: data/celeba/lm.txt does not exist")
    del cfg["labeled"]["celeba_landmarks"]
    (tmp_path / "data" / "celeba" / "list_landmarks_align_celeba.txt").unlink()  # the labeled set falls back
    assert _check(cfg).startswith("config error: evaluate.datasets[1].landmarks: ")  # explicit for the dataset


def test_check_datasets_duplicate_names(rendered, monkeypatch):
    root, _ = rendered
    monkeypatch.chdir(root)
    cfg = _overlays()
    cfg["evaluate"]["datasets"][1]["name"] = "CelebA"  # what the lfwa overlay used to call it
    assert _check(cfg) == ("config error: evaluate.datasets[1].name: 'CelebA' is also the name of "
                           "evaluate.labeled_name (the labeled set); dataset names must be distinct in tables: set "
                           "evaluate.labeled_name (e.g. \"CelebA (labeled)\") or rename this entry")
    cfg["evaluate"]["labeled_name"] = "CelebA (labeled)"
    D.check_datasets(cfg)
    cfg["evaluate"]["datasets"][1]["name"] = "LFWA"
    assert _check(cfg).startswith("config error: evaluate.datasets[1].name: 'LFWA' is also the name of "
                                  "evaluate.datasets[0].name; ")
    cfg["evaluate"]["datasets"][1].update(name="mine", format="csv", landmarks="x.txt")
    assert _check(cfg).startswith("config error: evaluate.datasets[1].landmarks: only for the celeba and lfwa formats")


def test_each_dataset_probes_its_own_label_fractions(in_stage_dir, tmp_path):
    """The paper probes CelebA at 1/10/100 % and LFWA at 10/50/100 %: a dataset's own label_fractions."""
    root = _celeba_folder(tmp_path / "lfwa", n=40, fmt="lfwa", parts=(0, 2))
    cfg = _fast(in_stage_dir, datasets=[{"name": "LFWA", "format": "lfwa", "path": str(root), "val_share": 0.3,
                                         "label_fractions": [0.5, 1.0]}])
    cfg = fc_config.validate(cfg)
    assert run_stage("evaluate", cfg) == 0
    m = json.loads(Path("results/reports/evaluate/metrics.json").read_text())
    assert set(m["probe"]["synthface"]["FLIP"]) == {"10", "100"} and set(m["probe"]["LFWA"]["FLIP"]) == {"50", "100"}
    assert m["dataset_fractions"] == {"synthface": [0.1, 1.0], "LFWA": [0.5, 1.0]}
    table = json.loads(Path("results/reports/evaluate/tables/probe.json").read_text())
    assert table["columns"][2:] == ["10 % labels", "50 % labels", "100 % labels", "wd_at_edge"]
    lfwa = next(r for r in table["rows"] if r[:2] == ["FLIP", "LFWA"])
    assert lfwa[2] is None and lfwa[3] is not None and lfwa[4] is not None


def test_retrieval_and_probe_slices_with_attribute_tables(in_stage_dir, tmp_path):
    """With the attribute stage's tables as an input, retrieval is reported by slice too: the held-out faces
    sliced by their confident labels (-1: in no slice); too small slices are counted, not scored."""
    import facecaption.evaluate as EV
    from facecaption import workflow as W
    from facecaption.core.shards import write_parquet
    from facecaption.core.stage import StageIO

    cfg = fc_config.validate(_fast(in_stage_dir, zero_shot=False, seeds=2, label_fractions=[1.0], slice_min=3,
                                   slices=[["Male", "Young"], ["Pale_Skin"], ["Eyeglasses"]]))
    df = read_parquet("results/labeled/test.parquet").iloc[16:]  # the held-out shard's faces
    table = df[["key", "Male", "Young", "Eyeglasses"]].astype({"Male": "int8", "Young": "int8", "Eyeglasses": "int8"})
    table.loc[table.index[0], "Male"] = -1  # not confident: in no Male × Young slice
    Path("results/attributes").mkdir(exist_ok=True)
    write_parquet(table, "results/attributes/00001.parquet")
    io = W.stage_io("evaluate", cfg, ["00000", "00001"])
    inputs = {**io.inputs, "attributes": ["results/attributes/00000.parquet", "results/attributes/00001.parquet"]}
    out = {"report": str(tmp_path / "evaluate"), "metrics": str(tmp_path / "evaluate.json")}
    assert EV.run(W.stage_config("evaluate", cfg), StageIO("evaluate", inputs, out, None, ["00000", "00001"])) == 0
    m = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    sl = m["slices"]
    r = sl["retrieval"]["FLIP"]["Male+Young"]["slices"]
    assert sum(v["n"] for v in r.values()) == 23  # 24 held-out faces, one not confidently labelled
    for v in r.values():
        assert ("t2i_r5" in v) == (not v.get("too_few")) and (v["n"] >= 3 or v.get("too_few"))
    assert "Pale_Skin" not in sl["retrieval"]["FLIP"]  # the tables do not predict it: skipped, and why
    assert sl["skipped"]["retrieval"] == "attribute(s) Pale_Skin not in the attribute tables"
    assert "random init" in sl["retrieval"] and sl["probe"]["synthface"]["random init"]["Eyeglasses"]["slices"]
    table = json.loads((tmp_path / "evaluate" / "tables" / "slices.json").read_text())
    assert "T→I R@5" in [row[1] for row in table["rows"]] and table["columns"][-1] == "gap Eyeglasses"
    gaps = sl["probe_by_fraction"]["synthface"]["FLIP"]["100"]
    assert gaps == {g: v["gap"] for g, v in sl["probe"]["synthface"]["FLIP"].items()}
    assert (tmp_path / "evaluate" / "figures" / "slices.png").stat().st_size > 1000


def test_overlapping_splits_stop_the_stage(in_stage_dir, tmp_path, capsys):
    """The same picture in a dataset's train and test split, under two file names: one line, no evaluation."""
    import shutil

    rng = np.random.default_rng(0)
    rows = ["image,split,Male"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
        rows.append(f"f{i}.png,{('train', 'val', 'test')[i % 3]},{i % 2}")
    shutil.copy(tmp_path / "f0.png", tmp_path / "copy.png")
    rows.append("copy.png,test,1")
    (tmp_path / "attributes.csv").write_text("\n".join(rows) + "\n")
    cfg = _fast(in_stage_dir, datasets=[{"name": "mine", "format": "csv", "path": str(tmp_path)}])
    assert run_stage("evaluate", cfg) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "evaluate: mine: splits train and test share 1 image(s) with identical pixels (e.g. 'f0.png' in train, "
        "'copy.png' in test)")


def test_celeba_identity_file_is_checked(tmp_path):
    root = _celeba_folder(tmp_path / "celeba")  # 12 images, two per identity, partition 0,1,2,0,1,2 by pairs
    lines = [f"{i + 1:06d}.jpg {i // 2 + 1}" for i in range(12)]
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    ds = D.read_dataset({"name": "CelebA", "format": "celeba", "path": str(root)})
    D.check_disjoint(ds)
    assert ds.overlap["identities_known"] == 12
    lines[4] = "000005.jpg 1"  # a test image of identity 1, which is in train
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    ds = D.read_dataset({"name": "CelebA", "format": "celeba", "path": str(root)})
    with pytest.raises(EvaluateInputError, match=r"^CelebA: splits train and test share 1 identity \(e.g. '1'\)$"):
        D.check_disjoint(ds)


def test_probe_without_the_audits_contaminated_test_items(in_stage_dir, tmp_path):
    """With the audit's contaminated list as an input, the probe is scored again on the test items that remain:
    the same predictions, fewer rows (checked against the per-attribute accuracies the report writes)."""
    import facecaption.evaluate as EV
    from facecaption import workflow as W
    from facecaption.audit import CONTAMINATED_COLUMNS
    from facecaption.core.stage import StageIO

    cfg = fc_config.validate(_fast(in_stage_dir, zero_shot=False, seeds=1, label_fractions=[1.0]))
    keys = read_parquet("results/labeled/test.parquet")["key"].tolist()
    flagged = keys[::4]
    table = pd.DataFrame([{"dataset": "synthface", "key": k, "near_copy": i % 2 == 0, "identity": i % 2 == 1,
                           "hamming": None, "inliers": None, "cosine": None, "pool_key": "00000_00000_00"}
                          for i, k in enumerate(flagged)], columns=CONTAMINATED_COLUMNS)
    from facecaption.core import split as splitmod

    held = list(splitmod.read("results/train/split.json").with_keys().keys)
    table = pd.concat([table, pd.DataFrame([{"dataset": splitmod.HELD_OUT_SET, "key": k, "near_copy": True,
                                             "identity": False, "pool_key": "00000_00001_00"} for k in held[:3]])])
    table.to_parquet(tmp_path / "contaminated.parquet")
    io = W.stage_io("evaluate", cfg, ["00000", "00001"])
    out = {"report": str(tmp_path / "evaluate"), "metrics": str(tmp_path / "evaluate.json")}
    inputs = {**io.inputs, "contaminated": str(tmp_path / "contaminated.parquet")}
    assert EV.run(W.stage_config("evaluate", cfg), StageIO("evaluate", inputs, out, None, ["00000", "00001"])) == 0
    m = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert m["contamination"]["synthface"] == {"test": len(keys), "dropped": len(flagged), "unknown_keys": 0,
                                               "near_copy": (len(flagged) + 1) // 2, "identity": len(flagged) // 2}
    assert m["contamination"][splitmod.HELD_OUT_SET]["dropped"] == 3
    ret = json.loads((tmp_path / "evaluate" / "tables" / "retrieval_clean.json").read_text())["rows"]
    assert {r[0] for r in ret} == {"FLIP", "random init"} and all(r[2] == f"{len(held)} / {len(held) - 3}" for r in ret)
    rows = json.loads((tmp_path / "evaluate" / "tables" / "probe_clean.json").read_text())["rows"]
    assert {r[0] for r in rows} == {"FLIP", "random init"}
    assert all(r[3] == f"{len(keys)} / {len(keys) - len(flagged)}" for r in rows)
    for r in rows:  # "all" is the probe table's number; the difference is what it says
        assert r[4] == round(m["probe"]["synthface"][r[0]]["100"]["mean"], 2)
        assert r[6] == round(m["probe"]["synthface"][r[0]]["100"]["clean"]["mean"] - m["probe"]["synthface"][r[0]]["100"]["mean"], 2)
    # the clean score, recomputed by hand from the same predictions
    pred = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    truth = np.array([[0, 1], [0, 1], [0, 1], [1, 1]])
    drop = {"mask": np.array([False, True, False, False])}
    assert EV._clean(pred, truth, drop).tolist() == [1.0, 1 / 3]  # rows 0, 2, 3
    assert EV._clean(pred, truth, {"mask": np.zeros(4, bool)}) is None
    # without the list (no audit in the run): no clean table
    assert EV.run(W.stage_config("evaluate", cfg), StageIO("evaluate", io.inputs | {"contaminated": str(tmp_path / "none")},
                                                           out, None, ["00000", "00001"])) == 0
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["probe_clean_table"] is False
