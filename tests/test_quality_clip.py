"""CLIP-IQA and relevance with local open_clip weights (a tiny architecture with random weights, registered
in the test: nothing is downloaded), and relevance under a FLIP model trained by the train stage itself."""

from __future__ import annotations

import json

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


def test_stage_with_clip_and_flip(workdir, tiny_clip):
    """CLIP-IQA with local weights; relevance under a FLIP model that the real train stage trained (a few
    steps) on the caption shards, scored only on the pairs that stage held out (its split.json)."""
    import pandas as pd

    build_inputs(per_shard=16)
    cfg = tiny_config(quality={"clip": tiny_clip, "brisque": False, "relevance": {"pairs": 12, "candidates": 4}},
                      train={"max_steps": 2, "batch_size": 8, "val_every": 2, "checkpoint_every": 2, "log_every": 1,
                             "num_workers": 0, "threads": 1, "val_max_samples": 8})
    assert run_stage("train", cfg) == 0
    split = json.loads((workdir / "results/train/split.json").read_text())
    assert split["held_out_shards"] == ["results/captions/00001.tar"]
    held_out = set(split["held_out_keys"])
    assert held_out == {f"00001_{i:05d}_00" for i in range(16)}
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
    pairs = pd.read_csv(workdir / "results/reports/quality/relevance_pairs.csv", dtype={"key": str})
    assert len(pairs) == 12 and set(pairs["key"]) <= held_out  # never a pair FLIP trained on
    assert pairs[["flip_similarity", "clip_similarity"]].notna().all().all()
