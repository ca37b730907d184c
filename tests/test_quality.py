"""Quality stage: each metric on hand-made inputs with known answers, the mergeable summaries, and the
per-shard stage + report on tiny hand-built shards (captions, collect, faces records, attributes)."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import run_stage, tiny_config
from PIL import Image

from facecaption.core import sketch
from facecaption.core.shards import ShardWriter, encode_jpeg, read_parquet, write_parquet
from facecaption.quality import image as qimg
from facecaption.quality import text as qtext
from facecaption.quality.relevance import relevance


def checker(size=64, cell=8):
    y, x = np.mgrid[:size, :size]
    g = (((x // cell) + (y // cell)) % 2 * 255).astype(np.uint8)
    return np.stack([g, g, g], -1)


def jpeg(rgb, quality=92):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# -- image metrics -------------------------------------------------------------------------------------
def test_sharp_beats_blurred():
    sharp = checker()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    g = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)  # noqa: E731
    assert qimg.sharpness(g(sharp)) > 5 * qimg.sharpness(g(blurred))
    assert qimg.sharpness(np.full((32, 32), 77, np.uint8)) == 0.0
    b = qimg.Brisque()
    rng = np.random.default_rng(0)
    natural = cv2.resize((rng.random((28, 28, 3)) * 255).astype(np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
    assert b(cv2.GaussianBlur(natural, (0, 0), 3)) > b(natural)


def test_brisque_model_ships_in_the_wheel():
    from pathlib import Path

    b = qimg.Brisque()
    assert (Path(b.model_path) / "svm.txt").is_file()
    assert (Path(b.model_path) / "normalize.pickle").is_file()


def test_brightness_contrast_resolution():
    half = np.zeros((10, 20, 3), np.uint8)
    half[:, 10:] = 200
    buf = io.BytesIO()
    Image.fromarray(half).save(buf, "PNG")
    row = qimg.image_row(buf.getvalue())
    assert (row["width"], row["height"]) == (20, 10)
    assert row["brightness"] == pytest.approx(100.0, abs=0.5)
    assert row["contrast"] == pytest.approx(100.0, abs=0.5)
    assert row["jpeg_quality"] is None  # PNG has no quantisation tables


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95])
def test_jpeg_quality_from_quantisation_tables(quality):
    row = qimg.image_row(jpeg(checker(), quality))
    assert row["jpeg_quality"] == pytest.approx(quality, abs=1)


def test_unreadable_image_raises():
    with pytest.raises(Exception):
        qimg.image_row(b"not a jpeg")


# -- text metrics --------------------------------------------------------------------------------------
def test_words_and_sentences():
    t = "She has brown hair. She is smiling! Wears earrings"
    assert len(qtext.words(t)) == 9
    assert qtext.words_per_sentence(t) == [4, 3, 2]
    assert qtext.words_per_sentence("") == []
    assert qtext.text_row("The man's hat.")["words"] == 3


def test_ngram_counts_known():
    texts = ["a b c", "a b d", ""]
    uniq = {n: len(np.unique(qtext.ngram_hashes(texts, n)[0])) for n in (1, 2, 3, 4)}
    assert uniq == {1: 4, 2: 3, 3: 2, 4: 0}
    h, owner = qtext.ngram_hashes(texts, 2)
    assert len(h) == 4 and owner.tolist() == [0, 0, 1, 1]  # n-grams never cross texts
    # the same n-gram in different texts hashes the same; different n never collide
    assert len(np.intersect1d(qtext.ngram_hashes(["x y"], 1)[0], qtext.ngram_hashes(["x y"], 2)[0])) == 0


def test_readability_offline():
    easy = qtext.flesch("The cat sat. The dog ran.")
    hard = qtext.flesch("Individuals demonstrating considerable photogenic characteristics predominate.")
    assert easy > hard
    assert np.isnan(qtext.flesch(""))


# -- mergeable summaries -------------------------------------------------------------------------------
def test_moments_merge_matches_all_at_once():
    rng = np.random.default_rng(1)
    x = rng.normal(50, 10, 5000)
    whole = sketch.Moments(np.linspace(0, 100, 101))
    whole.add(x)
    parts = [sketch.Moments(np.linspace(0, 100, 101)) for _ in range(3)]
    for p, chunk in zip(parts, np.array_split(x, 3)):
        p.add(chunk)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.n == whole.n == 5000
    assert merged.mean == pytest.approx(x.mean())
    assert merged.std == pytest.approx(x.std(ddof=1))
    assert merged.counts.tolist() == whole.counts.tolist()
    assert merged.quantile(0.5) == pytest.approx(np.median(x), abs=1.0)


def test_ngram_sketch_exact_then_hll():
    rng = np.random.default_rng(2)
    h = sketch.splitmix64(rng.permutation(200_000).astype(np.uint64))  # full-width 64-bit hashes
    s = sketch.NGramSketch(exact_limit=1_000_000, p=14)
    s.add(h[:1000])
    s.add(h[:1000])
    assert s.is_exact and s.count() == 1000
    big = sketch.NGramSketch(exact_limit=50_000, p=14)
    other = sketch.NGramSketch(exact_limit=50_000, p=14)
    big.add(h[:120_000])
    other.add(h[80_000:])
    big.merge(other)
    assert not big.is_exact
    assert big.count() == pytest.approx(200_000, rel=0.03)


# -- relevance -----------------------------------------------------------------------------------------
class _OneHot:
    """Image i and caption i embed to the same unit vector: every caption ranks its own image first."""

    def encode_images(self, images):
        return np.eye(len(images))[[int(im) for im in images]]

    def encode_texts(self, texts):
        return np.eye(len(texts))[[int(t) for t in texts]]


def test_relevance_rank1():
    n = 20
    r = relevance(_OneHot(), list(range(n)), [str(i) for i in range(n)], [f"k{i}" for i in range(n)], candidates=5)
    assert r["rank1_share"] == 1.0 and r["similarity_mean"] == pytest.approx(1.0) and r["chance"] == 0.2
    shuffled = [str((i + 1) % n) for i in range(n)]
    r = relevance(_OneHot(), list(range(n)), shuffled, [f"k{i}" for i in range(n)], candidates=5)
    assert r["similarity_mean"] == pytest.approx(0.0)


# -- the stage and the report on hand-built shards -----------------------------------------------------
def build_inputs(shards=("00000", "00001"), per_shard=24, crop=64, seed=0):
    """Captions/collect/faces/attributes shards as the upstream stages write them; every 4th image blurred.
    Shard 00000 gets one unreadable face image and one empty caption."""
    from facecaption.core.align import align
    from facecaption.synthface.render import render_image

    rng = np.random.default_rng(seed)
    for s in shards:
        cap_rows, col_rows, truth_rows, rec_rows, attr_rows = [], [], [], [], []
        with ShardWriter(f"results/captions/{s}.tar") as w:
            for i in range(per_shard):
                image_key = f"{s}_{i:05d}"
                key = f"{image_key}_00"
                degrade = "blur" if i % 4 == 0 else None
                img, faces = render_image(rng, size=128, n_faces=1, face_scale=(0.5, 0.6), degrade=degrade)
                f = faces[0]
                crop_rgb, _ = align(img, np.asarray(f["landmarks"]), size=crop)
                data = encode_jpeg(crop_rgb)
                if s == "00000" and i == 1:
                    data = b"\xff\xd8broken"
                male = bool(f["attributes"].get("Male", False))
                caption = (f"The {'man' if male else 'woman'} has {'brown' if i % 2 else 'black'} hair. "
                           f"{'He' if male else 'She'} is smiling and looks young.")
                if s == "00000" and i == 2:
                    caption = "  "
                w.write({"__key__": key, "jpg": data, "txt": caption, "json": {"image_key": image_key}})
                alt = f"photo {i} of a person at an event in the city with friends"
                cap_rows.append({"key": key, "image_key": image_key, "caption": caption, "captions": [caption],
                                 "grammar_caption": caption, "rewritten": False, "rewrite_error": None,
                                 "alt_text": alt, "n_labels": 6})
                col_rows.append({"key": image_key, "url": "", "width": 128, "height": 128, "source": "synthface",
                                 "caption": alt, "status": "success", "error_message": None})
                truth_rows.append({"key": image_key, "face": 0, "degrade": degrade or "none"})
                x0, y0, x1, y1 = f["box"]
                rec_rows += [{"image_key": image_key, "face": -1, "status": "kept", "reason": None, "score": None,
                              "x0": None, "y0": None, "x1": None, "y1": None},
                             {"image_key": image_key, "face": 0, "status": "kept", "reason": None, "score": 0.99,
                              "x0": x0, "y0": y0, "x1": x1, "y1": y1}]
                attr_rows.append({"key": key, "p_Male": 0.9 if male else 0.1, "Male": np.int8(male),
                                  "p_Young": 0.9, "Young": np.int8(1), "n_labels": 6, "kept": True, "reason": None})
        write_parquet(pd.DataFrame(cap_rows), f"results/captions/{s}.parquet")
        write_parquet(pd.DataFrame(col_rows), f"results/collect/{s}.parquet")
        write_parquet(pd.DataFrame(truth_rows), f"results/collect/{s}.truth.parquet")
        write_parquet(pd.DataFrame(rec_rows), f"results/faces/{s}.records.parquet")
        write_parquet(pd.DataFrame(attr_rows), f"results/attributes/{s}.parquet")


def write_split(cfg: dict, val_shards: int = 1) -> list[str]:
    """results/train/split.json for shards 00000 and 00001, through the function the train stage writes it
    with (facecaption.core.split); returns the held-out keys."""
    from facecaption import workflow as W
    from facecaption.core import split

    pairs = W.stage_inputs("report_quality", cfg, ["00000", "00001"])["pairs"]
    s = split.make(pairs, val_shards).with_keys()
    s.write(W.stage_outputs("train")["split"])
    return list(s.keys)


def relevance_keys() -> list[str]:
    return pd.read_csv("results/reports/quality/relevance_pairs.csv", dtype=str)["key"].tolist()


def test_stage_and_report(workdir):
    cfg = tiny_config(quality={"relevance": {"pairs": 16, "candidates": 4}, "min_check_faces": 3,
                               "degradation_check": "fail"})
    build_inputs()
    held_out = write_split(cfg)
    assert held_out == [f"00001_{i:05d}_00" for i in range(24)]
    for s in ("00000", "00001"):
        assert run_stage("quality", cfg, s) == 0
    q = read_parquet("results/quality/00000.parquet")
    assert len(q) == 24
    reasons = dict(zip(q.key, q.excluded_reason))
    assert reasons["00000_00001_00"].startswith("unreadable_image")
    assert reasons["00000_00002_00"] == "empty_caption"
    assert q.excluded_reason.notna().sum() == 2
    assert set(q.degrade.dropna()) == {"blur", "none"}
    assert q.loc[q.key == "00000_00000_00", "jpeg_quality"].item() == pytest.approx(92, abs=1)
    # every metric present for an included face
    ok = q[q.excluded_reason.isna()]
    assert ok[["sharpness", "brightness", "contrast", "brisque", "cap_flesch"]].notna().all().all()
    assert (ok.cap_words == 11).all() and (ok.alt_words == 13).all()

    assert run_stage("report_quality", cfg) == 0
    rep = json.loads(open("results/reports/quality/metrics.json").read())
    assert rep["faces"] == 48 and rep["excluded"] == 2 and rep["included"] == 46
    assert rep["exclusions"] == {"empty_caption": 1, "unreadable_image": 1}
    assert rep["degradation_check"]["judged"] and rep["degradation_check"]["passed"]
    assert rep["clip_iqa_computed"] is False and "quality.clip.weights" in rep["clip_iqa_reason"]
    assert rep["relevance"]["flip"]["computed"] is False
    # the relevance sample: held-out pairs only, drawn with the declared seed
    sample = relevance_keys()
    assert len(sample) == 16 and set(sample) <= set(held_out), sample
    assert rep["relevance_seed"] == 0 and rep["relevance_pair_source"].startswith("held-out pairs of the train stage")
    # the n-gram curve grows with the share of data and ends at the exact count
    cap4 = rep["ngrams"]["cap"]["4"]
    assert cap4["exact"] and cap4["unique"] == sorted(cap4["unique"])
    assert rep["vocabulary_alt"] == len({"photo", "of", "a", "person", "at", "an", "event", "in", "the", "city",
                                         "with", "friends"} | {str(i) for i in range(24)})
    t1 = json.loads(open("results/reports/quality/tables/table1.json").read())
    assert t1["rows"][-1][0].startswith("this run") and len(t1["quoted_rows"]) == len(t1["rows"]) - 1
    assert t1["rows"][-1][3] == 2  # p_Male, p_Young
    assert t1["rows"][-1][6] == 11.0
    for fig in ("image_quality_hist", "words_per_sentence", "unique_ngrams", "sharpness_by_degradation", "relevance"):
        assert (workdir / f"results/reports/quality/figures/{fig}.png").stat().st_size > 1000
    card = (workdir / "results/reports/quality/DATASET_CARD.md").read_text()
    assert "## Funnel" in card and "| Male |" in card and "Licence" in card

    # the paper section compiles from these artifacts alone
    paper_cfg = tiny_config(paper={"sections": ["quality"]})
    assert run_stage("paper", paper_cfg) == 0
    assert (workdir / "paper/build/paper.pdf").stat().st_size > 10_000
    # one dagger per quoted row + one in the note
    assert (workdir / "results/tables/table1.tex").read_text().count(r"$^{\dagger}$") == len(t1["rows"])

    # the report declares and reads `seed`: another seed draws another sample (it used to read seed 0 always)
    cfg7 = tiny_config(seed=7, quality=cfg["quality"])
    assert run_stage("report_quality", cfg7) == 0
    rep7 = json.loads(open("results/reports/quality/metrics.json").read())
    assert rep7["relevance_seed"] == 7
    assert set(relevance_keys()) <= set(held_out) and sorted(relevance_keys()) != sorted(sample)

    # no held-out shard (train.val_shards >= shards): no relevance, and the report says why
    write_split(cfg, val_shards=2)
    assert run_stage("report_quality", cfg) == 0
    rep = json.loads(open("results/reports/quality/metrics.json").read())
    assert relevance_keys() == [] and rep["relevance_held_out"] is False
    assert "no held-out caption shards" in rep["relevance_pair_source"]
    assert all(not r["computed"] and "no held-out" in r["reason"] for r in rep["relevance"].values())
