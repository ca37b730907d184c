"""Helpers that run inside processes of a 2-process gloo group (spawned by tests/test_train_ddp.py), and an
audit hook that records which process wrote which file."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def gathered_loss(rank: int, world: int, port: int, images: torch.Tensor, texts: torch.Tensor, scale: float,
                  out: str) -> None:
    """Rank ``rank`` takes its rows of the global batch, computes the system's contrastive loss over features
    gathered from every rank, backpropagates, and saves its loss and its rows' gradients to ``out``."""
    from facecaption.train.system import contrastive_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
        img = images[rows].clone().requires_grad_(True)
        txt = texts[rows].clone().requires_grad_(True)
        log_scale = torch.tensor(scale).log().requires_grad_(True)
        loss = contrastive_loss(rank, world)(img, txt, log_scale.exp())
        loss.backward()
        # DDP averages parameter gradients over ranks: the same mean applies to the scale's gradient
        g_scale = log_scale.grad.clone()
        dist.all_reduce(g_scale)
        torch.save({"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad, "scale_grad": g_scale / world},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


SITECUSTOMIZE = r'''
# Installed by tests/test_train_ddp.py: records every file a process opens for writing, creates, renames or
# removes below the working directory, with the process's rank (Lightning's LOCAL_RANK / RANK).
import os, sys
_LOG = os.environ.get("FC_WRITE_AUDIT")
_ROOT = os.path.realpath(os.getcwd())
def _rank():
    return os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
def _note(event, path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except Exception:
        return
    if p.startswith(_ROOT + os.sep) and not p.startswith(os.path.realpath(_LOG)):
        with open(_LOG, "a") as f:  # its own open is below the log path: not recorded
            f.write(f"{_rank()}\t{os.getpid()}\t{event}\t{os.path.relpath(p, _ROOT)}\n")
def _hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writes:
            _note("write", args[0])
    elif event in ("os.rename", "os.replace", "shutil.move", "shutil.copyfile"):
        _note(event, args[1])  # the destination (e.g. a checkpoint moved in from a temporary file)
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        _note(event, args[0])
if _LOG:
    sys.addaudithook(_hook)
'''
