"""The paper's recipe (config/paper.yaml), rehearsed end to end on this machine through every real code path.

``tests/config.rehearsal.yaml`` applied on top of ``config/paper.yaml`` may change only the keys in
:data:`ALLOWED` (sizes, this machine's lack of GPUs, the detector swap, the loopback endpoint's port); the
first test checks that key by key. The second runs the whole chain to the PDF on real inputs made here:

* the LAION-Face URL source: a URL parquet in LAION's columns served by a loopback HTTP server (synthface
  photos with dead links and a dead host), downloaded by img2dataset;
* CelebA (labeled set, aligned from its landmark file) and LFWA in their published formats
  (``facecaption.synthface.formats``), at the paths the paper overlay names;
* the ResNet-50 attribute classifier, the LLM rewrite against a loopback OpenAI-compatible server, FLIP as
  ViT-B/16 started from local weights for a few steps, CelebA + LFWA evaluation with the paper's fractions;

and then checks that the overlay's choices took effect in the artifacts, not only that files exist.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from support.repo import ROOT, copy_repo, snakemake

from facecaption.core import config as fc_config

PAPER, REHEARSAL = "config/paper.yaml", "tests/config.rehearsal.yaml"
ALLOWED = {
    # sizes: counts of shards, images, steps, epochs, batches, seeds; image sides a CPU cannot afford
    "urls.per_shard", "urls.chunk", "urls.threads", "urls.processes", "labeled.max_images",
    "align.size", "attributes.input_size", "train.image_size",
    "attributes.batch_size", "captions.llm.concurrency",
    "train.batch_size", "train.epochs", "train.warmup_steps", "train.val_shards", "train.val_every",
    "train.val_max_samples", "train.log_every", "train.checkpoint_every", "train.shuffle_buffer",
    "evaluate.batch", "evaluate.seeds", "evaluate.probe_iterations",
    # this machine: no GPU
    "urls.spark_master", "attributes.device", "train.accelerator", "train.devices", "train.precision", "train.compile", "evaluate.device",
    "resources.*",
    # swaps: no insightface model pack can be fetched here; the endpoint's port is the test's
    "faces.detector", "captions.llm.base_url",
}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v  # lists compare whole: a dataset entry cannot be changed piecemeal
    return out


def allowed(key: str) -> bool:
    return key in ALLOWED or any(a.endswith(".*") and key.startswith(a[:-1]) for a in ALLOWED)


def merged(*files: str, extra: dict | None = None) -> dict:
    cfg = {}
    for f in files:
        cfg = fc_config.deep_merge(cfg, yaml.safe_load((ROOT / f).read_text()))
    return fc_config.validate(fc_config.deep_merge(cfg, extra or {}))


def endpoint(url: str) -> dict:
    return {"captions": {"llm": {"base_url": url}}}


def test_rehearsal_differs_from_the_paper_only_in_allowed_keys():
    paper = flatten(merged("config.yaml", PAPER))
    rehearsal = flatten(merged("config.yaml", PAPER, REHEARSAL, extra=endpoint("http://127.0.0.1:1/v1")))
    assert paper.keys() == rehearsal.keys()
    changed = sorted(k for k in paper if paper[k] != rehearsal[k])
    assert [k for k in changed if not allowed(k)] == []
    # and the rehearsal really is the paper's recipe where it matters
    for key, value in {"faces.min_score.centerface": 0.7, "faces.min_size": 128, "faces.max_faces": None,
                       "attributes.arch": "resnet50", "attributes.label_threshold": 0.85, "attributes.min_labels": 5,
                       "captions.llm.enabled": True, "captions.llm.model": "Qwen-7B-Chat", "train.arch": "ViT-B-16",
                       "train.lr": 3.0e-5, "train.weight_decay": 0.05, "train.init": "models/ViT-B-16-openai.bin",
                       "labeled.source": "celeba", "source": "urls", "faces.min_score.insightface": 0.98,
                       "urls.distributor": "pyspark"}.items():
        assert rehearsal[key] == value == paper[key], key
    # every value of the paper overlay says where it comes from
    for no, line in enumerate((ROOT / PAPER).read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if ":" in code and code.strip() and not code.rstrip().endswith(":") and not code.strip().startswith("-"):
            assert "#" in line or line.startswith(" " * 6), f"{PAPER}:{no}: a value without its source: {line}"


@pytest.mark.slow
def test_rehearsal_runs_the_papers_recipe_end_to_end(tmp_path):
    import torch
    from support.crawl import LoopbackCrawl
    from support.llm import FakeLLM

    from facecaption.core import openclip as M
    from facecaption.synthface.formats import write_celeba, write_lfwa

    repo = copy_repo(tmp_path / "repo")
    crawl, llm = LoopbackCrawl(n_images=44), FakeLLM()
    try:
        expected = crawl.write_laion(repo / "data" / "laion400m-meta", repo / "data" / "laion_face_ids.pth")
        write_celeba(repo / "data" / "celeba", n_identities=60, images_per_identity=4, seed=1)
        write_lfwa(repo / "data" / "lfwa", n_identities=24, images_per_identity=3, seed=2)
        model, _ = M.create("ViT-B-16", seed=3)  # stands in for OpenAI's weights: a local open_clip state dict
        (repo / "models").mkdir()
        torch.save(model.state_dict(), repo / "models" / "ViT-B-16-openai.bin")
        del model
        (repo / "endpoint.yaml").write_text(yaml.safe_dump(endpoint(llm.url)))
        config = ["--configfile", PAPER, REHEARSAL, "endpoint.yaml"]
        # stage 0: FaRL's IDs joined with the LAION-400M metadata parts into the URL lists (its own workflow)
        snakemake(["-s", "rules/laion_face.smk", "--cores", "1", "--configfile", "config.yaml", PAPER], repo)
        joined = json.loads((repo / "data" / "laion-face.summary.json").read_text())
        assert (joined["ids_matched"], joined["ids_unmatched"], joined["metadata_rows_not_listed"]) == \
            (expected["matched"], expected["unmatched"], expected["not_listed"]), joined
        plan = snakemake(["-n", *config], repo)  # every input checked, a plan before any compute
        assert "train" in plan.stdout
        snakemake(["--cores", "2", *config], repo, timeout=2400)
    finally:
        crawl.close()
        llm.close()
    r = repo / "results"
    assert (repo / "paper/build/paper.pdf").stat().st_size > 50_000

    # collect: every URL has its status; the dead links failed, the rest came through img2dataset
    status = pd.concat(pd.read_parquet(p) for p in sorted((r / "collect").glob("*[0-9].parquet")))
    assert len(status) == len(crawl.rows)
    ok = status["status"] == "success"
    assert ok.sum() == len(crawl.files) and (~ok).sum() == len(crawl.rows) - len(crawl.files)
    spark_logs = list((repo / "logs" / "collect").glob("*.log"))  # the downloads ran on a Spark session
    assert spark_logs and all("SparkContext" in p.read_text() for p in spark_logs), spark_logs
    # faces: the paper's floor and threshold decided what was kept
    faces = pd.concat(pd.read_parquet(p) for p in sorted((r / "faces").glob("*[0-9].parquet")))
    assert len(faces) > 10 and (faces["box_width"] > 128).all() and (faces["score"] > 0.7).all()
    assert set(faces["detector"]) == {"centerface"}
    # attributes: ResNet-50 trained on the CelebA folder, the paper's filters applied
    model_meta = json.loads((r / "attributes" / "model.json").read_text())
    assert model_meta["arch"] == "resnet50"
    attrs = pd.concat(pd.read_parquet(p) for p in sorted((r / "attributes").glob("*[0-9].parquet")))
    assert len(attrs) and (attrs["kept"] == (attrs["n_labels"] > 5)).all() and attrs["kept"].any()
    # captions: every kept face's grammar caption rewritten by the (loopback) LLM
    caps = pd.concat(pd.read_parquet(p) for p in sorted((r / "captions").glob("*[0-9].parquet")))
    assert len(caps) and caps["rewritten"].all() and len(llm.requests) >= caps["grammar_caption"].nunique()
    # train: ViT-B/16 from the local start weights, epochs counted, exported in open_clip's hub layout
    summary = json.loads((r / "train" / "logs" / "summary.json").read_text())
    assert summary["base_arch"] == "ViT-B-16" and summary["image_size"] == 112 and summary["epochs"] == 0.5
    assert summary["steps"] == summary["max_steps_from_epochs"] >= 1
    hub = json.loads((r / "train" / "open_clip" / "open_clip_config.json").read_text())
    assert hub["model_cfg"]["vision_cfg"]["image_size"] == 112 and hub["model_cfg"]["vision_cfg"]["width"] == 768
    # evaluate: CelebA (the labeled set) and LFWA, each at the paper's label fractions, and retrieval
    ev = json.loads((r / "reports" / "evaluate" / "metrics.json").read_text())
    assert set(ev["datasets"]) == {"CelebA", "LFWA"}
    assert ev["dataset_fractions"] == {"CelebA": [0.01, 0.1, 1.0], "LFWA": [0.1, 0.5, 1.0]}
    assert set(ev["probe"]["LFWA"]["FLIP"]) == {"10", "50", "100"} and "FLIP" in ev["retrieval"]
    # the caption ablation: the paper's three arms, each a ViT-B/16 of its own on its own text, evaluated alike
    ab = json.loads((r / "reports" / "ablation" / "metrics.json").read_text())
    assert ab["arms"] == ["alt_text", "grammar", "caption"] and ab["main_arm"] == "caption"
    for arm in ("alt_text", "grammar"):
        arm_ev = json.loads((r / "ablation" / arm / "evaluate" / "metrics.json").read_text())
        assert set(arm_ev["datasets"]) == {"CelebA", "LFWA"} and arm_ev["retrieval_faces"] == ev["retrieval_faces"]
        arm_summary = json.loads((r / "ablation" / arm / "logs" / "summary.json").read_text())
        assert arm_summary["base_arch"] == "ViT-B-16" and arm_summary["steps"] == summary["steps"]
