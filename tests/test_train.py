"""Train stage on CPU: tiny coloured-face shards whose captions name the colour, so the loss falls fast."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_stage, tiny_config

from facecaption import workflow as W
from facecaption.core.shards import ShardWriter, encode_jpeg

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
           "purple": (150, 40, 180), "white": (240, 240, 240), "black": (15, 15, 15), "orange": (240, 140, 20)}
SIZE = 32


def tiny_train_cfg(**train) -> dict:
    t = {"batch_size": 16, "max_steps": 12, "lr": 5e-4, "warmup_steps": 2, "val_every": 6, "val_max_samples": 32,
         "log_every": 2, "checkpoint_every": 4, "num_workers": 0, "shuffle_buffer": 64, "threads": 1,
         "augment": {"randaugment_ops": 1}}
    t.update(train)
    return tiny_config(align={"size": SIZE}, train=t)


def face(rng: np.random.Generator, colour: tuple) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 90, np.uint8) + rng.integers(0, 30, (SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (yy - SIZE / 2) ** 2 / 0.16 + (xx - SIZE / 2) ** 2 / 0.1 < SIZE ** 2
    img[mask] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    return img


def pair_shards(n_shards: int = 2) -> list[str]:
    """The train stage's caption shards (its ``pairs`` input) for a run of ``n_shards`` shards."""
    return W.stage_inputs("train", tiny_train_cfg(), [f"{i:05d}" for i in range(n_shards)])["pairs"]


OUTS = W.stage_outputs("train")  # model, logs, open_clip, split


def write_shards(n_shards: int = 2, per_shard: int = 96, bad: bool = False) -> list[str]:
    paths = pair_shards(n_shards)
    names = list(COLOURS)
    for s, path in enumerate(paths):
        rng = np.random.default_rng(s)
        with ShardWriter(path) as w:
            for i in range(per_shard):
                c = names[int(rng.integers(len(names)))]
                key = f"{s:05d}_{i:05d}_00"
                sample = {"__key__": key, "jpg": encode_jpeg(face(rng, COLOURS[c])), "txt": f"a face painted {c}"}
                if bad and i == 3:
                    del sample["txt"]  # missing caption
                if bad and i == 5:
                    sample["jpg"] = b"not a jpeg"  # unreadable image
                if bad and i == 7:
                    sample["txt"] = "  "  # empty text
                w.write(sample)
    return paths


def losses(logs: str) -> list[tuple[int, float]]:
    import csv

    rows = {}
    with open(Path(logs) / "curves.csv") as f:
        for r in csv.DictReader(f):
            if r.get("train/loss"):
                rows[int(r["step"])] = float(r["train/loss"])
    return sorted(rows.items())


@pytest.mark.slow
def test_loss_falls_and_export_roundtrips(workdir):
    import open_clip
    from PIL import Image

    from facecaption.core import openclip as M

    cfg = tiny_train_cfg(max_steps=16)
    write_shards(bad=True)
    t0 = time.time()
    assert run_stage("train", cfg) == 0
    elapsed = time.time() - t0
    model_path, logs, hub = OUTS["model"], OUTS["logs"], OUTS["open_clip"]
    ls = losses(logs)
    assert np.mean([v for _, v in ls[-3:]]) < ls[0][1] - 0.4, ls
    summary = json.loads((Path(logs) / "summary.json").read_text())
    assert summary["steps"] == 16
    bad = {k: v for k, v in summary["skipped"].items() if k != "contaminated"}  # no audit list: nothing excluded
    assert summary["skipped"]["contaminated"] == 0
    assert bad == {"missing_caption": 1, "empty_text": 1, "bad_image": 1} or all(v >= 1 for v in bad.values()), bad
    assert elapsed < 90

    # plain open_clip loads the export and gives the same embeddings as the pipeline's loader
    arch = summary["arch"]
    plain, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=model_path)
    plain.eval()
    ours, pre2, tok = M.load(model_path, cfg["train"]["arch"])
    images = [Image.fromarray(face(np.random.default_rng(9), c)) for c in COLOURS.values()]
    texts = [f"a face painted {c}" for c in COLOURS]
    a = M.encode_images(ours, pre2, images)
    with torch.no_grad():
        b = plain.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    t = M.encode_texts(ours, tok, texts)
    assert t.shape == (len(texts), a.shape[1])
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    # the trained model matches colours to captions better than chance
    assert (np.argmax(a @ t.T, axis=1) == np.arange(len(texts))).mean() > 1 / len(texts)

    # the hub-layout folder loads in a process that never imports facecaption (a derived -32px architecture
    # that open_clip has never heard of), with the same image and text embeddings
    np.save("images.npy", np.stack([np.asarray(im) for im in images]))
    Path("texts.json").write_text(json.dumps(texts))
    fresh = subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP, f"local-dir:{hub}"], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    np.testing.assert_allclose(np.load("plain_images.npy"), a, atol=1e-5)
    np.testing.assert_allclose(np.load("plain_texts.npy"), t, atol=1e-5)


PLAIN_OPEN_CLIP = """
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
model, _, preprocess = open_clip.create_model_and_transforms(sys.argv[1])
tokenizer = open_clip.get_tokenizer(sys.argv[1])
model.eval()
images = [Image.fromarray(x) for x in np.load("images.npy")]
with torch.no_grad():
    img = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    txt = model.encode_text(tokenizer(json.load(open("texts.json"))), normalize=True).numpy()
np.save("plain_images.npy", img)
np.save("plain_texts.npy", txt)
assert not [m for m in sys.modules if m.startswith("facecaption")], "facecaption was imported"
"""


@pytest.mark.slow
def test_kill_and_resume_gives_same_weights(workdir):
    from facecaption.core.openclip import read_checkpoint
    from facecaption.train import SimulatedKill, train

    shards = write_shards()
    full = tiny_train_cfg(max_steps=6, num_workers=2, checkpoint_every=2, val_every=3, resume_dir="cache/a")
    train(full, shards, "a.pt", "logs_a")
    cut = tiny_train_cfg(max_steps=6, num_workers=2, checkpoint_every=2, val_every=3, resume_dir="cache/b")
    with pytest.raises(SimulatedKill):
        train(cut, shards, "b.pt", "logs_b", stop_after=5)  # checkpoint at step 4, killed after step 5
    assert not Path("b.pt").exists()
    summary = train(cut, shards, "b.pt", "logs_b")
    assert summary["resumed_from"] is not None and summary["steps"] == 6
    assert [s for s, _ in losses("logs_b")] == [s for s, _ in losses("logs_a")]  # curves survive the kill
    for name in ("summary.json", "curves.csv"):  # the versioned logs do not tell a resumed run from a whole one
        assert Path("logs_b", name).read_bytes() == Path("logs_a", name).read_bytes(), name
    assert json.loads(Path("logs/train/timing.json").read_text())["resumed_from"] == summary["resumed_from"]
    a, b = read_checkpoint("a.pt")["state_dict"], read_checkpoint("b.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_changed_captions_start_afresh_instead_of_resuming(workdir):
    """Same config, same shard paths, other captions: the checkpoint of the old data is not resumed."""
    from facecaption.train import train

    shards = write_shards()
    cfg = tiny_train_cfg(max_steps=2, val_every=2, checkpoint_every=2)
    first = train(cfg, shards, "a.pt", "logs_a")
    again = train(cfg, shards, "b.pt", "logs_b")  # unchanged data: the finished run is picked up
    assert first["resumed_from"] is None and again["resumed_from"] is not None
    with ShardWriter(shards[0]) as w:  # the same keys, the captions reworded
        for i in range(96):
            w.write({"__key__": f"00000_{i:05d}_00", "jpg": encode_jpeg(face(np.random.default_rng(i), COLOURS["red"])),
                     "txt": "a reworded caption"})
    changed = train(cfg, shards, "c.pt", "logs_c")
    assert changed["resumed_from"] is None and changed["steps"] == 2


def test_missing_init_weights_is_one_line(workdir, capsys):
    write_shards(n_shards=2, per_shard=8)
    assert run_stage("train", tiny_train_cfg(init="nowhere/weights.pt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "train error: train.init: weights file nowhere/weights.pt does not exist"


def test_baseline_loader_is_fixed():
    from facecaption.core import openclip as M

    m1, _, _ = M.load(None, "FLIP-Tiny", image_size=SIZE)
    m2, _, _ = M.load(None, "FLIP-Tiny", image_size=SIZE)
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k


def test_report_and_paper_section(workdir):
    """report_train on a logged run, and the paper section compiles against it."""
    import typst

    write_shards(per_shard=40)
    cfg = tiny_train_cfg(max_steps=4, val_every=2, log_every=1)
    assert run_stage("train", cfg) == 0
    assert run_stage("report_train", cfg) == 0
    report = W.stage_outputs("report_train")["report"]
    m = json.loads(Path(report, "metrics.json").read_text())
    assert m["steps"] == 4 and m["initial_loss"] is not None and m["final_val_loss"] is not None
    assert Path(report, "figures", "curves.png").exists()
    # the split the stage trained with, written for the stages that need held-out data
    split = json.loads(Path(OUTS["split"]).read_text())
    assert split["train_shards"] == pair_shards()[:1] and split["held_out_shards"] == pair_shards()[1:]
    assert split["held_out_keys"] == [f"00001_{i:05d}_00" for i in range(40)] and split["held_out_samples"] == 40
    assert m["train_shards"] == 1 and m["val_shards"] == 1
    Path("paper/t.typ").write_text('#include "sections/train.typ"\n')
    typst.compile("paper/t.typ", output="t.pdf", root=".")
    assert Path("t.pdf").stat().st_size > 1000


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_with_gradient_clipping(workdir, precision):
    """The paper's settings (mixed precision, clipping on: the default grad_clip 1.0) train on CPU; Lightning's
    AMP plugin used to refuse the fused AdamW at the first step ("does not allow for gradient clipping")."""
    from facecaption.train import train

    cfg = tiny_train_cfg(max_steps=4, val_every=4, checkpoint_every=4, log_every=1, precision=precision)
    assert cfg["train"]["grad_clip"] == 1.0
    summary = train(cfg, write_shards(per_shard=40), "m.pt", "logs_m")
    if summary["precision"] != precision:  # Lightning runs fp16 AMP only on GPUs (benchmarks/gpu_check.sh runs it)
        pytest.skip(f"Lightning ran {precision} as {summary['precision']} on this platform")
    assert summary["steps"] == 4
    assert all(np.isfinite(v) for _, v in losses("logs_m"))


def test_clipping_hook_clips_the_global_norm():
    """The system's own clipping hook (used instead of Lightning's precision plugin) scales the global gradient
    norm down to train.grad_clip, and leaves gradients alone when clipping is off."""
    from facecaption.train import system as S

    model = torch.nn.Linear(4, 2)
    model.weight.grad = torch.full_like(model.weight, 10.0)
    model.bias.grad = torch.full_like(model.bias, 10.0)
    sysm = S.FlipSystem(model, grad_clip=0.5)
    opt = torch.optim.AdamW(model.parameters())
    sysm.configure_gradient_clipping(opt)
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)
    sysm.hparams.grad_clip = None  # off: untouched
    model.weight.grad.fill_(10.0)
    sysm.configure_gradient_clipping(opt)
    assert float(model.weight.grad[0, 0]) == 10.0


def test_non_finite_loss_stops_with_one_line_and_keeps_the_good_checkpoint(workdir, capsys):
    """An absurd learning rate without clipping blows the weights up: the stage stops with one line naming the
    step and the newest good checkpoint, and no checkpoint holds non-finite weights."""
    write_shards(per_shard=40)
    cfg = tiny_train_cfg(max_steps=12, lr=1e30, warmup_steps=0, grad_clip=None, checkpoint_every=1, log_every=1,
                         val_every=100)
    assert run_stage("train", cfg) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train error: non-finite loss at step "), err
    from facecaption.train import latest_checkpoint

    ckpts = list(Path("cache/train").glob("*/checkpoints/*.ckpt"))
    assert ckpts and f"newest good checkpoint: {latest_checkpoint(ckpts[0].parent)} (kept" in err, err
    for ck in ckpts:
        state = torch.load(ck, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ck
    assert not Path(OUTS["model"]).exists()  # no export of the bad weights


def test_resume_keys_resume_and_learning_keys_start_afresh(workdir):
    """Which train.* keys name another resume folder (afresh) and which resume (facecaption.train.RESUME_KEYS)."""
    from facecaption.train import config_hash

    shards = write_shards(n_shards=2, per_shard=4)
    base = config_hash(tiny_train_cfg(), shards)
    for key, value in [("num_workers", 3), ("threads", 2), ("log_every", 7), ("checkpoint_every", 9),
                       ("val_every", 5), ("devices", 8), ("num_nodes", 2), ("compile", True), ("num_workers", "auto")]:
        assert config_hash(tiny_train_cfg(**{key: value}), shards) == base, key
    for key, value in [("lr", 1e-4), ("batch_size", 8), ("max_steps", 99), ("arch", "ViT-B-16"), ("grad_clip", None),
                       ("augment", {"randaugment_ops": 0})]:
        assert config_hash(tiny_train_cfg(**{key: value}), shards) != base, key


def test_fingerprints_are_read_once_and_cached(workdir, caplog):
    """The shard digests are computed by rank 0 once; a restart (or another rank) reads the cache, and a
    rewritten shard is hashed again."""
    import logging

    from facecaption.train import shard_fingerprints

    shards = write_shards(n_shards=2, per_shard=4)
    with caplog.at_level(logging.INFO, logger="facecaption.train"):
        first = shard_fingerprints(shards, Path("cache/train"), rank=0)
        again = shard_fingerprints(shards, Path("cache/train"), rank=1, wait_s=5)
    assert first == again and len([r for r in caplog.records if "fingerprinted" in r.message]) == 1
    caplog.clear()
    write_shards(n_shards=1, per_shard=5)  # shard 0 rewritten
    with caplog.at_level(logging.INFO, logger="facecaption.train"):
        third = shard_fingerprints(shards, Path("cache/train"), rank=0)
    assert third[1] == first[1] and third[0] != first[0]
    assert [r.message.split(",")[0] for r in caplog.records if "fingerprinted" in r.message] == \
        ["train: fingerprinted 1 caption shard(s)"]


def test_checkpoint_cut_short_by_a_kill_is_skipped(workdir):
    from facecaption.train import latest_checkpoint

    folder = Path("ck")
    folder.mkdir()
    torch.save({"x": torch.ones(3)}, folder / "step0000002.ckpt")
    good = folder / "step0000002.ckpt"
    data = good.read_bytes()
    time.sleep(0.01)
    (folder / "step0000004.ckpt").write_bytes(data[: len(data) // 2])  # the newest, truncated
    assert latest_checkpoint(folder) == str(good)


def test_gpu_asked_without_cuda_is_one_line_at_the_stage_start(workdir, capsys):
    """A train job that lands where torch finds no CUDA (a cluster's login node checks nothing: the job does)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_shards(n_shards=2, per_shard=8)
    assert run_stage("train", tiny_train_cfg(accelerator="gpu")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("config error: train.accelerator: gpu, but torch "), err
    assert not Path("cache").exists()  # stopped before any work


def test_epochs_set_the_steps_from_the_training_samples(workdir):
    """train.epochs: steps = ceil(epochs x training samples / global batch); the held-out shard is not counted."""
    from facecaption.train import train

    shards = write_shards(n_shards=3, per_shard=40)  # 2 training shards (80 samples) + 1 held out
    summary = train(tiny_train_cfg(epochs=1.5, max_steps=999, val_every=4, checkpoint_every=4), shards, "m.pt", "logs_m")
    assert summary["steps"] == 8 == summary["max_steps_from_epochs"]  # ceil(1.5 * 80 / 16)
    assert summary["epochs"] == 1.5 and summary["samples"] == 8 * 16


@pytest.mark.parametrize("n, val_shards, held_out", [(3, 1, 1), (5, 2, 2), (2, 2, 0), (1, 1, 0), (2, 0, 0)])
def test_one_split_rule(n, val_shards, held_out):
    """facecaption.core.split: the last train.val_shards shards are held out when there are more shards than
    that, otherwise none; never a shard on both sides."""
    from facecaption.core.split import make

    shards = pair_shards(n)
    s = make(shards, val_shards)
    assert list(s.held_out) == (shards[n - held_out:] if held_out else [])
    assert list(s.train) == shards[: n - held_out] and not set(s.train) & set(s.held_out)
    assert (s.note == "") == bool(held_out)


def test_few_shards_hold_nothing_out_and_the_split_file_says_so(workdir):
    """With no more shards than train.val_shards every shard trains: the split file has no held-out shard or
    key (so no later stage can take a training shard for held-out data), and the summary agrees."""
    from facecaption.core.split import read

    shards = write_shards(n_shards=2, per_shard=16)
    assert run_stage("train", tiny_train_cfg(max_steps=2, val_every=2, checkpoint_every=2, val_shards=2)) == 0
    split = read(OUTS["split"])
    assert list(split.train) == shards and split.held_out == () and split.keys == ()
    assert "no held-out caption shards" in split.note
    summary = json.loads(Path(OUTS["logs"], "summary.json").read_text())
    assert summary["train_shards"] == 2 and summary["val_shards"] == 0


def _text_shard(path: str, n: int = 12) -> None:
    """Faces with three grammar captions each; even faces also have a released caption, every third an alt-text."""
    rng = np.random.default_rng(0)
    with ShardWriter(path) as w:
        for i in range(n):
            texts = {"grammar": [f"g{i}-{j}" for j in range(3)], "rewritten": [],
                     "released": [f"released {i}"] if i % 2 == 0 else [], "alt_text": [f"alt {i}"] if i % 3 == 0 else []}
            w.write({"__key__": f"00000_{i:05d}_00", "jpg": encode_jpeg(face(rng, COLOURS["red"])), "txt": f"g{i}-0",
                     "json": {"key": f"00000_{i:05d}_00", "texts": texts}})


def _texts_seen(path: str, text: str, passes: int, train: bool = True) -> tuple[dict, np.ndarray]:
    from facecaption.train.data import SKIP_REASONS, CaptionStream

    ds = CaptionStream([path], tokenizer=lambda texts: list(texts), image_size=SIZE, batch_size=1, seed=3,
                       train=train, shuffle_buffer=1)
    seen: dict = {}
    skipped = np.zeros(len(SKIP_REASONS), np.int64)
    it = iter(ds)
    for _ in range(passes):
        _, texts, skip, keys = next(it)
        seen.setdefault(keys[0], []).append(texts[0])
        skipped += skip.numpy()
    return seen, skipped


def test_train_text_picks_the_field_and_samples_every_caption_per_pass(workdir):
    """train.text chooses the field; a face's several grammar captions are all used over passes (a seeded
    choice per pass, the same in a second run); faces without the field are skipped and counted; validation
    takes the first caption."""
    path = pair_shards(1)[0]
    _text_shard(path)
    seen, _ = _texts_seen(path, "caption", 12 * 12)
    assert all(len(v) == 12 for v in seen.values())
    assert sum(len(set(v)) == 3 for v in seen.values()) >= 10  # 12 passes over 3 captions: all three nearly always
    assert all(t.startswith(f"g{int(k.split('_')[1])}-") for k, v in seen.items() for t in v)
    again, _ = _texts_seen(path, "caption", 12 * 12)
    assert again == seen
    from facecaption.train.data import CaptionStream

    for text, expect in (("released", {i: f"released {i}" for i in range(0, 12, 2)}),
                         ("alt_text", {i: f"alt {i}" for i in range(0, 12, 3)})):
        ds = CaptionStream([path], tokenizer=lambda t: list(t), image_size=SIZE, batch_size=1, seed=3, train=False,
                           text=text)
        got = {int(keys[0].split("_")[1]): texts[0] for _, texts, _, keys in ds}
        assert got == expect, text
    val = CaptionStream([path], tokenizer=lambda t: list(t), image_size=SIZE, batch_size=4, seed=3, train=False)
    skipped = sum(int(s[0]) for _, _, s, _ in val)
    assert skipped == 0 and [t for _, texts, _, _ in val for t in texts] == [f"g{i}-0" for i in range(12)]
    with pytest.raises(ValueError, match="train.text"):
        CaptionStream([path], tokenizer=None, image_size=SIZE, batch_size=1, seed=3, text="laion")
