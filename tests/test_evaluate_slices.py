"""Evaluation you can trust: no choice sees a test split, a choice on the edge of its grid is flagged, splits that
overlap (by pixels or identity) stop the evaluation, and results by slice are computed right. Small constructed
cases with known answers; the stage-level checks are in test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import facecaption.evaluate as EV
from facecaption.core.shards import encode_jpeg
from facecaption.evaluate import data as D
from facecaption.evaluate import metrics as M
from facecaption.evaluate import probe as P
from facecaption.evaluate.data import EvaluateInputError


# -- no test split touches a choice ----------------------------------------------------------------------------
def _disagreeing_splits(seed: int = 0):
    """Features with one informative direction. Train and val labels follow it; the test labels follow its
    opposite. On val the weak decays win (the probe learns the direction); on test the strongest wins (it
    answers the prior and is right half the time, where the learned direction is almost always wrong)."""
    rng = np.random.default_rng(seed)

    def part(n, flip):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        y = (x[:, :1] + 0.3 * rng.normal(size=(n, 1)) > 0).astype(np.uint8)
        return x, (1 - y if flip else y)

    return part(300, False), part(200, False), part(200, True)


def _accuracy_by_decay(train, other, grid):
    """Accuracy on ``other`` of the probe fitted with each decay on its own (no selection at all)."""
    out = {}
    for d in grid:
        r = P.fit_and_score(train, other, other, [d], 100, norm=train[0])
        out[d] = float(r["test_accuracy"][0])
    return out


def test_weight_decay_is_chosen_on_validation_never_on_test():
    grid = [100.0, 1.0, 0.01]
    train, val, test = _disagreeing_splits()
    on_val, on_test = _accuracy_by_decay(train, val, grid), _accuracy_by_decay(train, test, grid)
    best_val, best_test = max(grid, key=on_val.get), max(grid, key=on_test.get)
    assert best_val != best_test and best_test == 100.0  # the construction: the two splits disagree
    res = P.fit_and_score(train, val, test, grid, 100, norm=train[0])
    assert res["decays"] == [best_val]  # val's choice ...
    assert res["test_accuracy"][0] == pytest.approx(on_test[best_val]) and res["test_accuracy"][0] < 0.2  # ... scored on test
    # swap the roles: the choice follows whichever split is passed as validation
    swapped = P.fit_and_score(train, test, val, grid, 100, norm=train[0])
    assert swapped["decays"] == [best_test]


def test_ties_on_validation_accuracy_are_broken_by_validation_loss():
    acc = np.array([[0.8, 0.5], [0.8, 0.7], [0.7, 0.7]])  # rows: decays, strongest first
    bce = np.array([[0.50, 0.6], [0.40, 0.5], [0.30, 0.4]])
    assert P.choose(acc, bce).tolist() == [1, 2]
    assert P.choose(acc, np.ones_like(bce)).tolist() == [0, 1]  # still tied: the stronger decay


# -- a choice on the edge of its grid ----------------------------------------------------------------------------
def test_edge_flag():
    grid = [10.0, 1.0, 0.1]
    assert P.edges(1.0, [1.0, 10.0, 0.1], grid) == {"at_edge": False, "edge_top": pytest.approx(1 / 3),
                                                    "edge_bottom": pytest.approx(1 / 3)}
    assert P.edges(10.0, [10.0, 10.0, 1.0], grid)["at_edge"]
    assert P.edges(0.1, [0.1], grid)["at_edge"]
    assert P.edges(1.0, [1.0], [1.0, 0.1])["at_edge"]  # a grid of two values has no interior
    # labels that carry nothing: the constant answer (the strongest decay) wins on validation, and it is flagged
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    y = (rng.random((400, 1)) < 0.3).astype(np.uint8)
    res = P.fit_and_score((x[:200], y[:200]), (x[200:300], y[200:300]), (x[300:], y[300:]), [100.0, 0.01, 0.0001], 60)
    assert res["decay"] == 100.0 and res["at_edge"] and res["edge_top"] == 1.0 and res["edge_bottom"] == 0.0


def test_probe_edges_and_choice_table_report_the_edge():
    s = {"probe": {"d": {"FLIP": {"1": {"decay": [10.0, 1.0], "wd_at_edge": True, "wd_edge_runs": 1, "wd_edge_top": 0.6,
                                        "wd_edge_bottom": 0.0, "mean": 1, "std": 0},
                                  "100": {"decay": [1.0], "wd_at_edge": False, "wd_edge_runs": 0, "wd_edge_top": 0.1,
                                          "wd_edge_bottom": 0.1, "mean": 1, "std": 0}},
                         "majority class": {"1": {"mean": 1, "std": 0}}}}}
    assert EV.probe_edges(s, [10.0, 1.0, 0.1]) == [{"dataset": "d", "model": "FLIP", "fraction": "1", "runs": 1,
                                                     "side": "largest"}]
    cols, rows = EV.choices_table(s, [10.0, 1.0, 0.1])
    assert cols[-1] == "wd_at_edge"
    assert rows == [["FLIP", "d", "1 %", "1 – 10", "60 %", "0 %", "yes (1 of 2 runs)"],
                    ["FLIP", "d", "100 %", "1", "10 %", "10 %", "no"]]


# -- overlapping splits stop -------------------------------------------------------------------------------------
def _jpegs(n, seed):
    rng = np.random.default_rng(seed)
    return [encode_jpeg(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def _set(train, val, test, ids=None):
    ids = ids or {}

    def split(prefix, sources):
        return D.Split([f"{prefix}{i}" for i in range(len(sources))], sources, np.zeros((len(sources), 1), np.uint8),
                       ids.get(prefix, [""] * len(sources)))

    return D.LabeledSet("faces", ["A"], {"train": split("tr", train), "val": split("va", val), "test": split("te", test)})


def test_overlap_by_image_content_stops_with_one_line(tmp_path):
    a, b, c = _jpegs(4, 0), _jpegs(2, 1), _jpegs(3, 2)
    ok = _set(a, b, c)
    assert D.check_disjoint(ok) == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert ok.overlap["images_hashed"] == 9 and ok.overlap["identities_known"] == 0
    assert ok.overlap["pairs"]["train_test"] == {"keys": 0, "images": 0, "identities": None}  # identities unknown
    # two training pictures again in the test split under other keys, one re-saved as PNG (same pixels)
    png = tmp_path / "copy.png"
    with Image.open(__import__("io").BytesIO(a[1])) as im:
        im.save(png)
    bad = _set(a, b, [*c, a[3], str(png)])
    with pytest.raises(EvaluateInputError) as exc:
        D.check_disjoint(bad)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == "faces: splits train and test share 2 image(s) with identical pixels (e.g. 'tr3' in train, 'te3' in test)"


def test_overlap_by_identity_stops_with_one_line():
    a, b, c = _jpegs(3, 0), _jpegs(2, 1), _jpegs(3, 2)
    ids = {"tr": ["p1", "p2", "p3"], "va": ["p4", "p5"], "te": ["p6", "p2", "p3"]}
    with pytest.raises(EvaluateInputError, match=r"^faces: splits train and test share 2 identities \(e.g. 'p2'\)$"):
        D.check_disjoint(_set(a, b, c, ids))
    ids["te"] = ["p6", "p7", "p8"]
    ds = _set(a, b, c, ids)
    D.check_disjoint(ds)
    assert ds.overlap["identities_known"] == 8 and ds.overlap["pairs"]["val_test"]["identities"] == 0


# -- slices ---------------------------------------------------------------------------------------------------------
def test_probe_slices_known_accuracies():
    # 3 attributes; Male and Young define 4 slices of 10 faces each; the predictions are wrong on a known share
    attrs = ["Male", "Young", "Smiling"]
    combos = [(1, 1), (1, 0), (0, 1), (0, 0)]
    truth = np.array([[m, y, i % 2] for m, y in combos for i in range(10)], dtype=np.uint8)
    pred = truth.astype(bool).copy()
    wrong = {(1, 1): 0, (1, 0): 3, (0, 1): 6, (0, 0): 15}  # wrong (face, attribute) cells per slice, of 30
    for k, (m, y) in enumerate(combos):
        cells = [(10 * k + i // 3, i % 3) for i in range(wrong[(m, y)])]
        for r, c in cells:
            pred[r, c] = ~pred[r, c]
    out = EV.probe_slices(pred, truth, attrs, [["Male", "Young"], ["Smiling"], ["Bald"]])
    assert set(out) == {"Male+Young", "Smiling"}  # a group naming an attribute the set lacks is left out
    got = out["Male+Young"]
    for (m, y), w in wrong.items():
        n, acc = got[f"Male={m},Young={y}"]
        assert n == 10 and acc == pytest.approx(1 - w / 30)
    assert [v[0] for v in out["Smiling"].values()] == [20, 20]
    # unknown labels (-1, the attribute stage's "not confident") put a face in no slice
    masks = EV.slice_masks(np.array([[1, -1], [1, 0], [-1, -1]]), ["Male", "Young"])
    assert [int(m.sum()) for m in masks.values()] == [0, 1, 0, 0]


def test_slice_summary_gap_and_too_few():
    cfg = {"evaluate": {"slices": [["Male", "Young"]], "slice_min": 5, "label_fractions": [1.0], "datasets": []}}
    ds = D.LabeledSet("d", ["Male", "Young"], {})

    def run(values):
        return {"fraction": 1.0, "slices": {"Male+Young": {n: [c, v] for n, c, v in zip(
            EV.slice_names(["Male", "Young"]), (10, 10, 10, 3), values)}}}

    results = {"FLIP": {"probe": {"d": [run((0.9, 0.8, 0.7, 0.1)), run((0.8, 0.8, 0.6, 0.2))]}, "retrieval": None}}
    sl = EV.summarise_slices(results, [ds], cfg, "no held-out captioned faces")
    g = sl["probe"]["d"]["FLIP"]["Male+Young"]
    assert g["slices"]["Male=0,Young=0"] == {"n": 3, "too_few": True}  # not a number
    assert g["slices"]["Male=1,Young=1"]["mean"] == pytest.approx(85) and g["slices"]["Male=1,Young=1"]["std"] == pytest.approx(5)
    assert g["gap"]["mean"] == pytest.approx(20) and g["gap"]["std"] == pytest.approx(0)  # 90-70 and 80-60
    assert (g["best"], g["worst"]) == ("Male=1,Young=1", "Male=0,Young=1")
    assert sl["skipped"]["retrieval"] == "no held-out captioned faces" and sl["retrieval"] == {}


def test_retrieval_slices_use_the_whole_gallery():
    img = np.eye(4, dtype=np.float32)
    txt = img.copy()
    txt[3] *= 0.4
    img[3, 2] = 0.6  # face 3 is closer to face 2's caption than to its own: it misses at R@1
    hits = M.retrieval_hits(img, txt, ["a", "b", "c", "d"], (1, 5, 10))
    values = {"Pale_Skin": np.array([[1], [1], [0], [0]])}
    out = EV.retrieval_slices(hits, values, [["Pale_Skin"]])["Pale_Skin"]
    assert out["Pale_Skin=1"]["n"] == 2 and out["Pale_Skin=1"]["i2t_r1"] == 1.0
    assert out["Pale_Skin=0"]["i2t_r1"] == 0.5 and out["Pale_Skin=0"]["i2t_r5"] == 1.0
    assert M.retrieval(img, txt, ["a", "b", "c", "d"])["i2t_r1"] == 0.75  # the same hits as the whole-set metric


def test_card_slice_shares(tmp_path):
    """The dataset card's share of the captioned faces in each evaluation slice (confident labels only)."""
    import pandas as pd

    from facecaption.core.shards import write_parquet
    from facecaption.quality.card import slice_shares

    keys = [f"k{i}" for i in range(10)]
    write_parquet(pd.DataFrame({"key": keys[:8]}), tmp_path / "00000.parquet")  # 8 of 10 faces captioned
    (tmp_path / "a").mkdir()
    male = [1, 1, 1, 0, 0, -1, 1, 0, 1, 1]
    young = [1, 0, 1, 1, 0, 1, -1, 1, 0, 0]
    write_parquet(pd.DataFrame({"key": keys, "Male": male, "Young": young}), tmp_path / "a" / "00000.parquet")
    out = slice_shares([str(tmp_path / "a" / "00000.parquet")], [str(tmp_path / "00000.parquet")])
    assert out["faces"] == 8
    g = out["groups"]["Male+Young"]
    assert {n: v["n"] for n, v in g.items()} == {"Male=1,Young=1": 2, "Male=1,Young=0": 1, "Male=0,Young=1": 2,
                                                 "Male=0,Young=0": 1, "unsure": 2}
    assert g["Male=1,Young=1"]["share"] == 0.25
    assert out["groups"]["Pale_Skin"]["unsure"]["n"] == 8  # not predicted: every face unsure
