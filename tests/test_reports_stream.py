"""The report stages stream: each one's summary is the same whether it reads the shards one by one or all at
once (and the same as the whole-frame computations it replaced), and it never holds on to a shard's frames
after moving on to the next one.

The shards are synthetic artifacts in the real schemas (``benchmarks/bench_reports.py``, with ground truth),
read by the report modules' own readers (``iter_shards``)."""

from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facecaption.attributes import report as attributes_report
from facecaption.captions import report as captions_report
from facecaption.collect import report as collect_report
from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.report import _plain
from facecaption.faces import accounting
from facecaption.faces import report as faces_report
from facecaption.faces.audit import audit as faces_audit
from facecaption.quality import report as quality_report

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ["00000", "00001", "00002"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reports", ROOT / "benchmarks" / "bench_reports.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three small shards with ground truth; shard 00001 is thinned so the shards differ in size."""
    bench = _bench()
    root = tmp_path_factory.mktemp("stream")
    for i, s in enumerate(SHARDS):
        bench.make_shard(root, s, 120 + 40 * i, seed=10 + i)
    return root, {k: [str(root / x) for x in v] for k, v in bench.paths(SHARDS).items()}


def _all_at_once(frames_per_shard):
    """The shards' frames concatenated into one 'shard' (what the reports read before streaming)."""
    per_shard = list(frames_per_shard)
    return [tuple(pd.concat([f[j] for f in per_shard], ignore_index=True) for j in range(len(per_shard[0])))]


def _watched(frames_per_shard, alive: list):
    """Yield each shard's frames, checking that the frames of every shard but the last one yielded are gone
    (the consumer's loop variables still hold the last one while the next is read)."""
    held: list[list] = []
    for frames in frames_per_shard:
        gc.collect()
        if len(held) >= 2:
            alive.append(sum(r() is not None for r in held[-2]))
        held.append([weakref.ref(f) for f in frames])
        yield frames
        frames = None


def test_corpus_summary_streams(shards):
    root, p = shards
    one = collect_report.summarise_files(p["collect"], p["truth"])
    truth_cols = [c for c in pd.read_parquet(p["truth"][0]).columns]
    whole = collect_report.summarise(_all_at_once(collect_report.iter_shards(p["collect"], p["truth"])),
                                     truth_columns=truth_cols)
    assert _plain(one.metrics("synthface", 3)) == _plain(whole.metrics("synthface", 3))
    assert one.attribute_frequency().to_dict() == whole.attribute_frequency().to_dict()
    assert one.degrade == whole.degrade
    # the whole-frame computations the report used to make
    images = pd.concat([pd.read_parquet(x) for x in p["collect"]], ignore_index=True)
    truth = pd.concat([pd.read_parquet(x) for x in p["truth"]], ignore_index=True)
    m = one.metrics("synthface", 3)
    assert m["identities"] == truth["identity"].nunique() and m["faces"] == len(truth)
    assert m["mean_caption_words"] == images.caption.fillna("").str.split().str.len().mean()
    assert m["mean_width"] == images.width.mean()
    attr_cols = [c for c in truth.columns if c not in collect_report.TRUTH_META]
    assert one.attribute_frequency().equals(truth[attr_cols].mean().sort_values(ascending=False))
    alive = []
    collect_report.summarise(_watched(collect_report.iter_shards(p["collect"], p["truth"]), alive))
    assert alive == [0]


def test_faces_summary_streams(shards):
    root, p = shards
    streamed = faces_report.summarise(faces_report.iter_shards(p["faces"], p["records"], p["truth"]), 0.5, 24)
    whole = faces_report.summarise(_all_at_once(faces_report.iter_shards(p["faces"], p["records"], p["truth"])), 0.5, 24)
    assert streamed.funnel == whole.funnel and streamed.face_reasons == whole.face_reasons
    assert _plain(streamed.audit_metrics()) == _plain(whole.audit_metrics())
    faces = pd.concat([pd.read_parquet(x) for x in p["faces"]], ignore_index=True)
    truth = pd.concat([pd.read_parquet(x) for x in p["truth"]], ignore_index=True)
    expected = faces_audit(faces, truth, 24)
    got = streamed.audit_metrics()
    assert _plain(got) == _plain(expected)
    exact = ("truth_faces", "truth_faces_eligible", "recall", "precision", "true_positives", "false_positives",
             "recall_by_degradation")
    assert {k: got[k] for k in exact} == {k: expected[k] for k in exact}
    # float32 columns are summed in float64 (pandas summed them in float32: they agree to ~7 digits)
    assert streamed.mean("score") == pytest.approx(float(faces.score.astype(float).mean()), rel=1e-12)
    alive = []
    faces_report.summarise(_watched(faces_report.iter_shards(p["faces"], p["records"], p["truth"]), alive), 0.5, 24)
    assert alive == [0]


def test_accounting_reads_the_named_inputs(shards):
    """The record accounting over report_faces's named inputs (the registry's paths under the shards' folder),
    paired by shard: every stage adds up, and its counts are those of the files."""
    from facecaption import workflow as W

    root, p = shards
    io = W.stage_io("report_faces", {}, SHARDS)
    kinds = ("records", "face_records", "faces", "attributes", "captions")
    named = {k: [str(root / x) for x in io.many(k)] for k in kinds}
    assert named["records"] == p["collect"] and named["face_records"] == p["records"] and named["faces"] == p["faces"]
    # the lists in another order pair up the same way (by shard id, not by position)
    mixed = accounting.shard_paths(named["records"], named["face_records"][::-1], named["faces"],
                                   named["attributes"][::-1], named["captions"])
    acc = accounting.account(accounting.shard_paths(*named.values()))
    assert {k: v.as_dict() for k, v in acc.items()} == {k: v.as_dict() for k, v in accounting.account(mixed).items()}
    assert accounting.violations(acc) == []
    collect = pd.concat([pd.read_parquet(x) for x in p["collect"]], ignore_index=True)
    attrs = pd.concat([pd.read_parquet(x, columns=["key", "kept"]) for x in p["attributes"]], ignore_index=True)
    caps = pd.concat([pd.read_parquet(x, columns=["key"]) for x in p["captions"]], ignore_index=True)
    assert acc["collect"].n_in == len(collect) and acc["collect"].kept == int((collect.status == "success").sum())
    assert acc["attributes"].n_in == len(attrs) and acc["attributes"].kept == int(attrs.kept.sum())
    assert acc["captions"].n_in == int(attrs.kept.sum()) and acc["captions"].kept == len(caps)
    # a stage whose files are not there (not run yet) ends the accounting of that shard
    partial = accounting.account(accounting.shard_paths(named["records"], named["face_records"], named["faces"]))
    assert partial["faces (faces)"].n_in == acc["faces (faces)"].n_in and partial["attributes"].n_in == 0


def test_attributes_summary_streams(shards):
    root, p = shards
    attrs = list(ATTRIBUTES)
    streamed = attributes_report.summarise(attributes_report.iter_shards(p["attributes"], p["faces"], p["truth"], attrs), attrs)
    frames = _all_at_once(attributes_report.iter_shards(p["attributes"], p["faces"], p["truth"], attrs))
    whole = attributes_report.summarise(frames, attrs)
    assert attributes_report.audit_metrics(streamed.audit) == attributes_report.audit_metrics(whole.audit)
    # the whole-frame audit, as the report computed it before
    assert attributes_report.audit_metrics(streamed.audit) == attributes_report.audit(*frames[0], attrs)
    assert attributes_report.audit_metrics(streamed.audit)["faces_matched"] > 0
    for k in ("n", "kept", "n_labels", "confident", "cells", "reasons", "labels_per_face"):
        assert getattr(streamed, k) == getattr(whole, k), k
    alive = []
    attributes_report.summarise(_watched(attributes_report.iter_shards(p["attributes"], p["faces"], p["truth"], attrs),
                                         alive), attrs)
    assert alive == [0]


def test_captions_summary_streams(shards):
    root, p = shards
    args = (p["captions"], p["attributes"], p["faces"], p["truth"])
    streamed = captions_report.summarise(captions_report.iter_shards(*args))
    whole = captions_report.summarise(_all_at_once(captions_report.iter_shards(*args)))
    assert streamed.faith.metrics() == whole.faith.metrics() and streamed.faith.metrics()["facts_checked_against_truth"]
    assert streamed.word_stats() == whole.word_stats()
    assert (streamed.unique.count(), streamed.vocab.count()) == (whole.unique.count(), whole.vocab.count())
    # the whole-frame computations the report used to make
    caps = pd.concat([pd.read_parquet(x) for x in p["captions"]], ignore_index=True)
    all_caps = [c for lst in caps["captions"] for c in lst]
    words = np.array([len(c.split()) for c in all_caps])
    assert streamed.word_stats()["mean_words"] == float(words.mean())
    assert streamed.word_stats()["median_words"] == float(np.median(words))
    assert streamed.unique.count() == len(set(all_caps))
    assert streamed.vocab.count() == len({w.strip(".,").lower() for c in all_caps for w in c.split()})
    alive = []
    captions_report.summarise(_watched(captions_report.iter_shards(*args), alive))
    assert alive == [0]


@pytest.mark.parametrize("counts", [[3], [1, 1], [2, 5, 1], [4, 4], [1, 2, 3, 4]])
def test_caption_word_median_from_counts(counts):
    summ = captions_report.CaptionsSummary()
    values = [v for v, c in zip((7, 9, 12, 15), counts) for _ in range(c)]
    summ.words.update(values)
    summ.captions = len(values)
    assert summ.word_stats()["median_words"] == float(np.median(values))
    assert summ.word_stats()["mean_words"] == float(np.mean(values))


def test_quality_summary_streams(shards):
    root, p = shards
    q = {"share_steps": 4, "exact_ngram_limit": 1000, "hll_precision": 12}
    streamed = quality_report.summarise(p["quality"], [], q, 16)
    whole = quality_report.Summaries(4, 1000, 12)
    whole.add_table(pd.concat([quality_report._read(x, quality_report.QUALITY_COLUMNS) for x in p["quality"]],
                              ignore_index=True), 0, 16)
    assert (streamed.faces, streamed.included, streamed.texts) == (whole.faces, whole.included, whole.texts)
    for m in ("sharpness", "brisque", "width"):
        a, b = streamed.image[m].summary(), whole.image[m].summary()
        assert _plain(a) == _plain(b) and streamed.image[m].hist() == whole.image[m].hist()
    assert sorted(k for _, k, _ in streamed.candidates) == sorted(k for _, k, _ in whole.candidates)
