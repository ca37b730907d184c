"""Data-parallel training without a GPU: Lightning's DDP strategy over the gloo backend, two CPU processes.

(a) the contrastive loss over features gathered from both ranks equals the single-process loss of the global
    batch (and so do the gradients DDP averages);
(b) across ranks and data-loading workers every training sample is read once per pass;
(c) a DDP run killed mid-way (SIGKILL of the whole process group) resumes to the same weights, curves and
    summary as an uninterrupted DDP run: bit-identical on CPU, where gloo's reductions are deterministic
    (multi-GPU bf16 runs are not; there compare metrics);
(d) only rank 0 writes: an audit hook (sys.addaudithook, installed through sitecustomize in every process)
    records each file opened for writing, created, moved in or removed below the working folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from support.ddp import SITECUSTOMIZE, gathered_loss
from support.repo import BIN, env
from test_train import tiny_train_cfg, write_shards

from facecaption.core.openclip import read_checkpoint
from facecaption.train.system import contrastive_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_equals_single_process_loss(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, 16, generator=gen), dim=1)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(12, 16, generator=gen), dim=1)
    scale = 14.0
    img, txt = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    log_scale = torch.tensor(scale).log().requires_grad_(True)
    single = contrastive_loss()(img, txt, log_scale.exp())
    single.backward()

    out = str(tmp_path / "rank")
    torch.multiprocessing.spawn(gathered_loss, args=(2, _free_port(), images, texts, scale, out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    tol = {"rtol": 1e-5, "atol": 1e-6}  # float32 sums in another order
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, single.detach(), **tol)
    # each rank's rows get the gradient of the sum of both ranks' losses (gather with grad); DDP's average
    # over the 2 ranks is the single-process gradient of the global batch
    torch.testing.assert_close(torch.cat([r["img_grad"] for r in ranks]) / 2, img.grad, **tol)
    torch.testing.assert_close(torch.cat([r["txt_grad"] for r in ranks]) / 2, txt.grad, **tol)
    torch.testing.assert_close(ranks[0]["scale_grad"], log_scale.grad, **tol)


@pytest.mark.parametrize("n_shards,per_shard", [(8, 10), (2, 40)])  # a shard per reader / fewer shards than readers
def test_every_sample_once_per_pass_across_ranks_and_workers(workdir, n_shards, per_shard):
    from open_clip import get_tokenizer
    from torch.utils.data import DataLoader

    from facecaption.core.openclip import create
    from facecaption.train.data import CaptionStream

    shards = write_shards(n_shards=n_shards, per_shard=per_shard)
    every = {f"{s:05d}_{i:05d}_00" for s in range(n_shards) for i in range(per_shard)}
    create("FLIP-Tiny")
    tok = get_tokenizer("FLIP-Tiny")
    world, workers, batch = 2, 2, 5
    per_rank = len(every) // world // batch  # batches of one pass on a rank, both its workers together

    def keys(rank: int, shuffle: int, batches: int) -> list[str]:
        ds = CaptionStream(shards, tokenizer=tok, image_size=16, batch_size=batch, seed=0, train=True,
                           augment={}, shuffle_buffer=shuffle)
        ds.rank, ds.world = rank, world
        seen = []
        for i, b in enumerate(DataLoader(ds, batch_size=None, num_workers=workers)):
            if i == batches:
                break
            seen += b[3]
        return seen

    # one pass, unshuffled: exactly every sample once, none on two ranks or two workers, no rank starved
    first = [keys(r, 1, per_rank) for r in range(world)]
    assert all(len(k) == per_rank * batch for k in first)
    assert Counter(first[0] + first[1]) == Counter(every)
    # shuffled (a buffer smaller than a reader's pass), six passes: each sample 5 to 7 times (the buffer
    # carries at most a few samples across a pass boundary), never twice as often as a pass allows
    counts = Counter(k for r in range(world) for k in keys(r, 8, 6 * per_rank))
    assert set(counts) == every and min(counts.values()) >= 5 and max(counts.values()) <= 7


def _train_cmd(cfg: dict) -> list[str]:
    return [str(BIN / "facecaption"), "train", "--cfg", json.dumps(cfg)]


def _ddp_env(workdir: Path) -> dict:
    site = workdir / "audit_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [e.get("PYTHONPATH")])])
    e["FC_WRITE_AUDIT"] = str(workdir / "audit" / "writes.tsv")
    (workdir / "audit").mkdir(exist_ok=True)
    return e


@pytest.mark.slow
def test_ddp_kill_resume_equals_uninterrupted_and_only_rank0_writes(workdir):
    from facecaption import workflow as W

    write_shards(n_shards=4, per_shard=48)
    common = {"accelerator": "cpu", "devices": 2, "num_workers": 1, "threads": 1, "max_steps": 10,
              "checkpoint_every": 2, "val_every": 5, "log_every": 1}
    e = _ddp_env(workdir)
    outs = W.stage_outputs("train")
    model, logs = outs["model"], outs["logs"]

    # uninterrupted
    whole = subprocess.run(_train_cmd(tiny_train_cfg(resume_dir="cache/a", **common)), env=e, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    summary_a = json.loads(Path(logs, "summary.json").read_text())
    assert summary_a["world_size"] == 2 and summary_a["strategy"] == "ddp" and summary_a["steps"] == 10
    assert summary_a["global_batch"] == 2 * 16
    # (the shards were fingerprinted once, by rank 0, before the second rank started)
    assert whole.stderr.count("fingerprinted") == 1, whole.stderr[-3000:]
    a = {"model": read_checkpoint(model)["state_dict"], "curves": Path(logs, "curves.csv").read_bytes(),
         "summary": Path(logs, "summary.json").read_bytes()}

    # (d) only rank 0 wrote, yet two processes trained
    audit = [line.split("\t") for line in Path(e["FC_WRITE_AUDIT"]).read_text().splitlines()]
    assert {r for r, *_ in audit} == {"0"}, sorted({(r, ev, p) for r, _, ev, p in audit if r != "0"})[:20]
    written = {p for *_, p in audit}
    assert model in written and any(p.endswith("step0000006.ckpt") for p in written), sorted(written)
    assert outs["split"] in written, sorted(written)

    # killed once the step-4 checkpoint exists, then run again: it resumes
    cfg_b = tiny_train_cfg(resume_dir="cache/b", **common)
    proc = subprocess.Popen(_train_cmd(cfg_b), env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    try:
        while not list(Path("cache/b").glob("*/checkpoints/step0000004.ckpt")):
            assert proc.poll() is None and time.time() < deadline, "the run ended before its step-4 checkpoint"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(Path("cache/b").glob("*/checkpoints/final.ckpt")), "the kill came after the run had finished"
    again = subprocess.run(_train_cmd(cfg_b), env=e, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    b = read_checkpoint(model)["state_dict"]
    assert a["model"].keys() == b.keys()
    differ = [k for k in b if not torch.equal(a["model"][k], b[k])]
    assert differ == [], differ
    assert Path(logs, "curves.csv").read_bytes() == a["curves"]
    assert Path(logs, "summary.json").read_bytes() == a["summary"]
    audit = [line.split("\t") for line in Path(e["FC_WRITE_AUDIT"]).read_text().splitlines()]
    assert {r for r, *_ in audit} == {"0"}
