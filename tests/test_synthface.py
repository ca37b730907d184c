"""Tests for the procedural face renderer (facecaption.synthface) and the CenterFace runner."""

from __future__ import annotations

import numpy as np
import pytest

from facecaption.core.celeba import ATTRIBUTES
from facecaption.synthface import (
    DEGRADATIONS,
    DRAWABLE,
    render_aligned,
    render_face,
    render_image,
    sample_attributes,
    sample_identity,
)

BEARDS = ("5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns")
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


@pytest.fixture(scope="module")
def detector():
    from facecaption.faces.centerface import CenterFace

    return CenterFace(threads=2)


def _iou(a, b):
    from facecaption.faces.centerface import iou

    return iou(a, b)


# ---------------------------------------------------------------------------------------------
# API, determinism, geometry
# ---------------------------------------------------------------------------------------------
def test_drawable_names():
    assert len(DRAWABLE) >= 25
    assert set(DRAWABLE) <= set(ATTRIBUTES)
    assert len(set(DRAWABLE)) == len(DRAWABLE)


def test_determinism():
    for seed in (0, 1, 2):
        a, fa = render_image(np.random.default_rng(seed), size=256, n_faces=(0, 3), degrade="jpeg")
        b, fb = render_image(np.random.default_rng(seed), size=256, n_faces=(0, 3), degrade="jpeg")
        assert a.tobytes() == b.tobytes()
        assert fa == fb
    c, _ = render_image(np.random.default_rng(99), size=256)
    assert c.tobytes() != a.tobytes()


@pytest.mark.parametrize("kw", [
    dict(size=256), dict(size=256, n_faces=3, face_scale=(0.15, 0.3)),
    dict(size=256, face_scale=(0.08, 0.12)), dict(size=640, n_faces=2), dict(size=192, face_scale=(0.6, 0.8)),
])
def test_boxes_and_landmarks(kw):
    for seed in range(8):
        img, faces = render_image(np.random.default_rng(seed), **kw)
        h, w = img.shape[:2]
        assert img.dtype == np.uint8 and img.shape == (kw["size"], kw["size"], 3)
        assert len(faces) >= 1
        for f in faces:
            x0, y0, x1, y1 = f["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            lm = np.asarray(f["landmarks"])
            assert lm.shape == (5, 2)
            assert np.all(lm[:, 0] >= x0) and np.all(lm[:, 0] <= x1)
            assert np.all(lm[:, 1] >= y0) and np.all(lm[:, 1] <= y1)
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left before right
            assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth
            assert set(f["attributes"]) == set(DRAWABLE)
        # faces do not overlap much
        for i in range(len(faces)):
            for j in range(i + 1, len(faces)):
                assert _iou(faces[i]["box"], faces[j]["box"]) < 0.2


def test_degradations_and_aligned():
    for d in DEGRADATIONS:
        img, faces = render_image(np.random.default_rng(5), size=128, degrade=d)
        assert img.shape == (128, 128, 3)
        if d in ("blur", "lowres"):
            assert all(f["attributes"]["Blurry"] for f in faces)
    rng = np.random.default_rng(3)
    ident = sample_identity(rng)
    img, face = render_aligned(rng, ident, sample_attributes(rng, ident), size=112)
    assert img.shape == (112, 112, 3) and face["identity_id"] == ident["id"]


# ---------------------------------------------------------------------------------------------
# attributes: consistency and frequencies
# ---------------------------------------------------------------------------------------------
def test_attribute_consistency_and_frequencies():
    rng = np.random.default_rng(0)
    n = 3000
    rows = []
    for _ in range(n):
        ident = sample_identity(rng)
        a = sample_attributes(rng, ident)
        assert set(a) == set(DRAWABLE) and all(isinstance(v, bool) for v in a.values())
        assert a["No_Beard"] == (not any(a[b] for b in BEARDS))
        assert sum(a[c] for c in HAIR_COLOURS) <= 1
        if a["Bald"]:
            assert not a["Bangs"] and not any(a[c] for c in HAIR_COLOURS)
        if not a["Male"]:
            assert a["No_Beard"]
        assert not (a["Wavy_Hair"] and a["Straight_Hair"])
        rows.append([a[k] for k in DRAWABLE])
    freq = dict(zip(DRAWABLE, np.mean(rows, axis=0)))
    for k, p in freq.items():
        assert 0.03 <= p <= 0.97, (k, p)
    assert freq["Heavy_Makeup"] > 0.2 and 0.3 < freq["Male"] < 0.55
    # makeup and lipstick mostly women
    m = np.array(rows)[:, DRAWABLE.index("Male")]
    lip = np.array(rows)[:, DRAWABLE.index("Wearing_Lipstick")]
    assert lip[m].mean() < 0.05 < lip[~m].mean()


def test_identity_persistence():
    rng = np.random.default_rng(1)
    ident = sample_identity(rng)
    a1, a2 = sample_attributes(rng, ident), sample_attributes(rng, ident)
    for k in ("Male", "Young", "Pale_Skin", "Big_Nose", "Black_Hair", "Blond_Hair", "Bald"):
        assert a1[k] == a2[k]


# ---------------------------------------------------------------------------------------------
# drawn attributes are visible
# ---------------------------------------------------------------------------------------------
def _pair(attr, on, off=None, seed=0, base=None):
    """Render one identity twice on the same grey canvas, with ``attr`` on and off (same rng stream)."""
    rng = np.random.default_rng(seed)
    ident = sample_identity(rng)
    attrs = sample_attributes(rng, ident)
    attrs.update(base or {})
    out = []
    for val in (on, off if off is not None else not on):
        a = dict(attrs)
        a.update(val if isinstance(val, dict) else {attr: val})
        canvas = np.full((256, 256, 3), 128, np.uint8)
        face = render_face(canvas, (128, 128), 120, 0.0, ident, a, np.random.default_rng(seed + 1))
        out.append((canvas, face))
    return out


def test_eyeglasses_visible():
    for seed in range(4):
        (img1, f1), (img0, _) = _pair("Eyeglasses", True, seed=seed, base={"Wearing_Hat": False})
        lm = np.asarray(f1["landmarks"])
        diffs = []
        for ex, ey in lm[:2]:
            # a ring around the eye, where the frame lies
            y0, y1, x0, x1 = int(ey - 22), int(ey + 22), int(ex - 30), int(ex + 30)
            d = img0[y0:y1, x0:x1].astype(int).sum(2) - img1[y0:y1, x0:x1].astype(int).sum(2)
            diffs.append((d > 60).mean())
        assert min(diffs) > 0.05, diffs


def test_hair_colour_visible():
    for seed in range(4):
        base = {"Bald": False, "Wearing_Hat": False, "Gray_Hair": False, "Brown_Hair": False}
        (img_k, f), (img_b, _) = _pair("Black_Hair", {"Black_Hair": True, "Blond_Hair": False},
                                       {"Black_Hair": False, "Blond_Hair": True}, seed=seed, base=base)
        x0, y0, x1, y1 = f["box"]
        top = slice(max(0, int(y0 - 0.25 * (y1 - y0))), int(y0))
        cols = slice(int(x0 + 0.2 * (x1 - x0)), int(x1 - 0.2 * (x1 - x0)))
        assert img_b[top, cols].mean() > img_k[top, cols].mean() + 40


@pytest.mark.parametrize("attr", ["Smiling", "Mustache", "Wearing_Hat", "Bangs", "Heavy_Makeup", "Big_Nose",
                                  "Wearing_Necktie", "Wearing_Earrings", "Bushy_Eyebrows", "Goatee"])
def test_attribute_changes_pixels(attr):
    extra = {"Male": True} if attr in ("Mustache", "Goatee", "Wearing_Necktie") else {}
    (a, _), (b, _) = _pair(attr, True, seed=3, base=extra)
    assert np.abs(a.astype(int) - b.astype(int)).sum(2).astype(bool).mean() > 0.001


# ---------------------------------------------------------------------------------------------
# the detector finds the faces, and nothing else
# ---------------------------------------------------------------------------------------------
def test_centerface_recall(detector):
    n, hits, scores = 100, 0, []
    for i in range(n):
        img, faces = render_image(np.random.default_rng(10_000 + i), size=256)
        assert len(faces) == 1
        dets = detector.detect(img, threshold=0.5)
        best = max((d for d in dets), key=lambda d: _iou(d.box, faces[0]["box"]), default=None)
        if best is not None and _iou(best.box, faces[0]["box"]) >= 0.5:
            hits += 1
            scores.append(best.score)
            # landmarks roughly where they were drawn (eyes within 12 % of the box width)
            w = faces[0]["box"][2] - faces[0]["box"][0]
            err = np.linalg.norm(best.landmarks[:3] - np.asarray(faces[0]["landmarks"])[:3], axis=1)
            assert err.max() < 0.2 * w
    assert hits / n >= 0.95, hits
    assert np.mean(scores) > 0.7


def test_no_detections_without_faces(detector):
    for i in range(40):
        img, faces = render_image(np.random.default_rng(20_000 + i), size=256, n_faces=0)
        assert faces == []
        assert not [d for d in detector.detect(img, threshold=0.5)]


def test_detection_dataclass(detector):
    img, faces = render_image(np.random.default_rng(7), size=200)  # not a multiple of 32: padded
    dets = detector.detect(img, threshold=0.3)
    assert dets and dets[0].landmarks.shape == (5, 2) and 0 < dets[0].score <= 1
    x0, y0, x1, y1 = dets[0].box
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
