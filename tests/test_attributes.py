"""Attributes: the paper's filters, training (deterministic), prediction on a face shard and the audit report.

The faces stage may not exist while this runs, so the module builds its own faces shard from the labeled
test split (tests/config.test.yaml) with matching ground truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_stage, tiny_config

from facecaption.attributes import apply_filters
from facecaption.attributes.data import AttributeDataError, labeled_attributes
from facecaption.core.shards import ShardWriter, iter_samples, read_parquet, write_parquet
from facecaption.synthface.truth import truth_labels


def build_faces_shard(shard: str = "00000", n: int | None = None, drop_crop: str | None = None) -> list[str]:
    """results/faces/<shard>.tar/.parquet and collect/<shard>.truth.parquet from the labeled test split."""
    labels = read_parquet("results/labeled/test.parquet").set_index("key")
    attrs = [c for c in labels.columns if c not in ("split", "identity")]
    faces, truth, keys = [], [], []
    Path("results/faces").mkdir(parents=True, exist_ok=True)
    Path("results/collect").mkdir(parents=True, exist_ok=True)
    with ShardWriter(f"results/faces/{shard}.tar") as w:
        for i, sample in enumerate(iter_samples("results/labeled/test.tar")):
            if n is not None and i >= n:
                break
            image_key = f"{shard}_{i:05d}"
            fkey = f"{image_key}_00"
            box = [10.0, 12.0, 60.0, 70.0]
            if fkey != drop_crop:
                w.write({"__key__": fkey, "jpg": sample["jpg"],
                         "json": {"image_key": image_key, "face": 0, "score": 0.99, "box": box, "landmarks": [0.0] * 10}})
            faces.append({"key": fkey, "image_key": image_key, "face": 0, "score": 0.99, "x0": box[0], "y0": box[1],
                          "x1": box[2], "y1": box[3], "landmarks": [0.0] * 10, "box_width": 50.0,
                          "detector": "test", "alt_text": "a portrait"})
            row = labels.loc[sample["__key__"]]
            truth.append({"key": image_key, "face": 0, "x0": box[0] + 1, "y0": box[1], "x1": box[2], "y1": box[3] + 2,
                          **{a: bool(row[a]) for a in attrs}})
            keys.append(fkey)
    write_parquet(pd.DataFrame(faces), f"results/faces/{shard}.parquet")
    write_parquet(pd.DataFrame(truth), f"results/collect/{shard}.truth.parquet")
    return keys


def fast_config(**over) -> dict:
    base = {"synthface": {"num_shards": 1}, "attributes": {"epochs": 2, "input_size": 32, "width": 8, "batch_size": 32},
            "paper": {"sections": ["attributes"]}}
    from facecaption.core.config import deep_merge

    return tiny_config(**deep_merge(base, over))


def learning_config() -> dict:
    """A small setup in which the classifier learns more than the label frequencies: 400 training and 100
    validation crops, 10 epochs of a width-16 net. On the tiny overlay's 120 / 32 crops it stays at the
    majority guess (mean validation accuracy 0.814 after 2 epochs of a width-8 net, 0.817 after 20 epochs of
    width 16, against a majority baseline of 0.821)."""
    return fast_config(labeled={"identities": {"train": 200, "val": 50, "test": 30}},
                       attributes={"epochs": 10, "input_size": 32, "width": 16})


@pytest.fixture(scope="module")
def labeled_dir(tmp_path_factory):
    """The labeled splits of ``learning_config`` rendered once for the module (about 10 s)."""
    d = tmp_path_factory.mktemp("labeled")
    old = os.getcwd()
    os.chdir(d)
    try:
        assert run_stage("labeled", learning_config()) == 0
    finally:
        os.chdir(old)
    return d


@pytest.fixture
def labeled_work(labeled_dir, workdir):
    import shutil

    shutil.copytree(labeled_dir / "results", workdir / "results")
    return workdir


def test_filters_follow_the_paper():
    p = np.array([[0.9, 0.1, 0.5, np.nan, 0.851, 0.149, 0.85, 0.15]], np.float32)
    labels, n, kept = apply_filters(p, 0.85, 5)
    assert labels.tolist() == [[1, 0, -1, -1, 1, 0, -1, -1]]
    assert labels.dtype == np.int8 and n.tolist() == [4] and kept.tolist() == [False]
    _, n, kept = apply_filters(np.array([[0.99] * 6, [0.99] * 5 + [0.5]]), 0.85, 5)
    assert n.tolist() == [6, 5] and kept.tolist() == [True, False]  # more than 5, strictly


def test_labeled_columns_are_checked():
    df = pd.DataFrame({"key": ["a"], "split": ["train"], "identity": [1], "Male": [1], "Smiling": [0]})
    assert labeled_attributes(df, "x.parquet") == ["Male", "Smiling"]
    with pytest.raises(AttributeDataError, match="x.parquet: unknown attribute column 'Grinning'"):
        labeled_attributes(df.assign(Grinning=1), "x.parquet")
    with pytest.raises(AttributeDataError, match="'Smiling' is empty"):
        labeled_attributes(df.assign(Smiling=[None]), "x.parquet")
    with pytest.raises(AttributeDataError, match="'Male' holds 3"):
        labeled_attributes(df.assign(Male=[3]), "x.parquet")


def test_training_is_deterministic():
    from facecaption.attributes.train import train

    g = torch.Generator().manual_seed(1)
    x = (torch.rand(40, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    y = (torch.rand(40, 3, generator=g) > 0.5).float()
    acfg = fast_config()["attributes"]
    acfg.update(epochs=1, batch_size=16)
    m1, info1 = train(acfg, 7, ["Male", "Smiling", "Young"], (x, y), x[:8], y[:8])
    m2, _ = train(acfg, 7, ["Male", "Smiling", "Young"], (x, y), x[:8], y[:8])
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert set(info1["val_accuracy"]) == {"Male", "Smiling", "Young"}


def majority_baseline(labels: pd.DataFrame, attrs: list[str]) -> pd.Series:
    """Per attribute, the accuracy of always guessing the more frequent value of ``labels``."""
    share = labels[attrs].astype(float).mean()
    return np.maximum(share, 1 - share)


def test_classifier_beats_the_majority_guess(labeled_work):
    """Validation accuracy against always guessing each attribute's more frequent value on the same validation
    labels. Measured (learning_config at seeds 0 / 1 / 2, on this project's CPU machine): mean accuracy
    0.835 / 0.831 / 0.847 against a majority baseline of 0.809 / 0.804 / 0.810 (+0.026 / +0.026 / +0.036);
    Male +0.27 / +0.31 / +0.18 above its baseline. The thresholds keep half of the smallest measured gain."""
    cfg = learning_config()
    assert run_stage("attributes_train", cfg) == 0
    meta = json.loads(Path("results/attributes/model.json").read_text())
    attrs = meta["attributes"]
    majority = majority_baseline(read_parquet("results/labeled/val.parquet"), attrs)
    acc = pd.Series(meta["val_accuracy"])[attrs]
    assert meta["val_accuracy_mean"] == pytest.approx(acc.mean())
    assert acc.mean() >= majority.mean() + 0.013, (acc.mean(), majority.mean())
    assert acc["Male"] >= majority["Male"] + 0.09, (acc["Male"], majority["Male"])


def test_train_predict_and_report(labeled_work):
    cfg = learning_config()
    assert run_stage("attributes_train", cfg) == 0
    meta = json.loads(Path("results/attributes/model.json").read_text())
    lab_cols = [c for c in read_parquet("results/labeled/train.parquet").columns if c not in ("key", "split", "identity")]
    assert meta["attributes"] == lab_cols and "Attractive" not in meta["attributes"]  # synthface draws 39
    assert 0.0 <= meta["val_accuracy_mean"] <= 1.0  # how well it learns: test_classifier_beats_the_majority_guess
    state = torch.load("results/attributes/model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    keys = build_faces_shard(n=30, drop_crop="00000_00003_00")
    assert run_stage("attributes", cfg, "00000") == 0
    df = read_parquet("results/attributes/00000.parquet")
    assert df["key"].tolist() == keys  # every face gets a row, nothing dropped silently
    for a in meta["attributes"]:
        assert df[f"p_{a}"].dtype == np.float32 and df[a].dtype == np.int8
    row = df.set_index("key").loc["00000_00003_00"]
    assert row["reason"] == "no_crop" and not row["kept"] and row["n_labels"] == 0
    ok = df[df.key != "00000_00003_00"]
    assert (ok["n_labels"] == (ok[meta["attributes"]] >= 0).sum(axis=1)).all()
    assert (ok["kept"] == (ok["n_labels"] > 5)).all()
    assert ok.loc[~ok.kept, "reason"].str.startswith("too_few_labels").all()
    assert (ok.loc[ok.kept, "reason"] == "").all()

    assert run_stage("report_attributes", cfg) == 0
    m = json.loads(Path("results/reports/attributes/metrics.json").read_text())
    # the kept labels against the truth (the rendered attributes of the test-split faces), beside guessing each
    # attribute's more frequent training value on the same (face, attribute) cells: measured (seeds 0 / 1 / 2)
    # 0.943 / 0.951 / 0.927 against 0.915 / 0.929 / 0.900 (+0.028 / +0.022 / +0.027) over about 650 cells of 29
    # kept faces; with the training labels shuffled against the images, both are 0.909
    attrs = meta["attributes"]
    faces, rendered = read_parquet("results/faces/00000.parquet"), read_parquet("results/collect/00000.truth.parquet")
    truth = truth_labels(faces, rendered, attrs)
    kept = df[df.kept].set_index("key")
    labels, true = kept[attrs].to_numpy(), truth.loc[kept.index, attrs].to_numpy()
    confident = labels >= 0
    frequent = (read_parquet("results/labeled/train.parquet")[attrs].astype(float).mean() >= 0.5).astype(int).to_numpy()
    guess = np.broadcast_to(frequent, labels.shape)
    accuracy = float((labels[confident] == true[confident]).mean())
    assert m["kept_label_accuracy_pooled"] == pytest.approx(accuracy, abs=1e-6)
    assert len(kept) >= 20 and confident.sum() >= 400
    assert accuracy >= float((guess[confident] == true[confident]).mean()) + 0.01
    assert m["faces"] == 30 and m["audit"] is True and m["faces_matched"] == 30
    assert 0 <= m["share_kept"] <= 1 and m["label_threshold"] == 0.85 and m["min_labels"] == 5
    assert Path("results/reports/attributes/figures/attribute_accuracy.png").exists()
    assert Path("results/reports/attributes/figures/framing.png").stat().st_size > 5000  # both framings shown
    assert Path("results/reports/attributes/tables/attributes_summary.json").exists()
