"""CLIP-IQA and relevance with local open_clip weights (a tiny architecture with random weights, registered
in the test: nothing is downloaded), and the FLIP relevance path through the train stage's loader."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from conftest import run_stage, tiny_config
from test_quality import build_inputs

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path):
    import open_clip
    import torch

    cfg_path = tmp_path / "fc-tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("fc-tiny-clip")
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return {"weights": str(weights), "arch": "fc-tiny-clip", "model_config": str(cfg_path), "batch": 8}


def test_clip_scorer(tiny_clip):
    from PIL import Image

    from facecaption.quality.image import ClipScorer

    s = ClipScorer(**tiny_clip)
    ims = [Image.new("RGB", (40, 40), (i * 40, 100, 200 - i * 30)) for i in range(5)]
    iqa = s.clip_iqa(ims)
    assert iqa.shape == (5,) and ((iqa > 0) & (iqa < 1)).all()
    t = s.encode_texts(["a face", "another face"])
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_stage_with_clip_and_flip(workdir, tiny_clip, monkeypatch):
    # a stand-in for facecaption.train.model (the train stage's loader): the same tiny open_clip model
    from facecaption.quality.image import ClipScorer

    fake = types.ModuleType("facecaption.train.model")

    def load(checkpoint, arch, device="cpu"):
        s = ClipScorer(checkpoint, arch, tiny_clip["model_config"], 8)
        return s, s.preprocess, s.tokenizer

    fake.load = load
    fake.encode_images = lambda model, preprocess, images, batch: model.encode_images(images)
    fake.encode_texts = lambda model, tokenizer, texts, batch: model.encode_texts(texts)
    pkg = types.ModuleType("facecaption.train")
    pkg.model = fake
    monkeypatch.setitem(sys.modules, "facecaption.train", pkg)
    monkeypatch.setitem(sys.modules, "facecaption.train.model", fake)

    build_inputs(per_shard=8)
    (workdir / "results/train").mkdir(parents=True)
    (workdir / "results/train/flip.pt").write_bytes(open(tiny_clip["weights"], "rb").read())
    cfg = tiny_config(quality={"clip": tiny_clip, "brisque": False,
                               "relevance": {"pairs": 12, "candidates": 4}})
    cfg["train"] = {"arch": "fc-tiny-clip"}  # the train section's schema belongs to the train stage
    from facecaption.core import config as fc_config

    if "train" not in fc_config.schema()["properties"]:
        monkeypatch.setattr("facecaption.cli.cfgmod.validate", lambda c: c)
    for s in ("00000", "00001"):
        assert run_stage("quality", cfg, s) == 0
    assert run_stage("report_quality", cfg) == 0
    m = json.loads((workdir / "results/reports/quality/metrics.json").read_text())
    assert m["clip_iqa_computed"] and 0 < m["image_clip_iqa"]["mean"] < 1
    for name in ("flip", "clip"):
        r = m["relevance"][name]
        assert r["computed"], r
        assert r["pairs"] == 12 and r["rank1_groups"] == 3 and 0 <= r["rank1_share"] <= 1
        assert -1 <= r["similarity_mean"] <= 1
