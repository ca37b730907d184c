"""Frozen encoders: load a model and turn images and texts into L2-normalised feature arrays.

Everything that touches a model goes through :func:`load` and :func:`image_features` /
:func:`text_features`, on the core's one open_clip loader (:mod:`facecaption.core.openclip`: it registers the
embedded run's tiny architecture and knows how FLIP checkpoints are stored).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facecaption.core import openclip as oc

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    name: str
    arch: str
    checkpoint: str | None  # None = random weights
    model: object
    preprocess: object
    tokenizer: object


def load(name: str, arch: str, checkpoint: str | None, device: str = "cpu") -> Encoder:
    """``checkpoint`` None = the architecture with random weights (fixed seed): the random baseline."""
    model, preprocess, tokenizer = oc.load(checkpoint, arch, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Encoder(name, arch, checkpoint, model, preprocess, tokenizer)


def checkpoint_arch(checkpoint: str, fallback: str) -> str:
    """The architecture a train-stage checkpoint records (registered in this process), else ``fallback``.

    The random baseline uses it, so it has exactly FLIP's architecture (e.g. a derived image size)."""
    meta = oc.read_checkpoint(checkpoint).get("facecaption", {})
    arch = meta.get("arch")
    if not arch:
        return fallback
    if oc.open_clip.get_model_config(arch) is None and meta.get("model_cfg"):
        oc.register_config(arch, meta["model_cfg"])
    return arch


def open_image(source) -> Image.Image:
    """A sample as PIL RGB: JPEG bytes, a path, a PIL image, or (path, crop box)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        with Image.open(io.BytesIO(source)) as im:
            return im.convert("RGB")
    if isinstance(source, tuple):  # (path, "square"): centre-crop a CelebA-style portrait to a square
        path, _ = source
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            return im.crop((left, top, left + side, top + side))
    with Image.open(Path(source)) as im:
        return im.convert("RGB")


def _device(model) -> torch.device:
    return next(model.parameters()).device


class _BlockPool:
    """Forward hooks that mean-pool the tokens of the last ``n`` vision transformer blocks."""

    def __init__(self, model, n: int):
        visual = model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise ValueError(f"evaluate.probe_layers = pooled needs a ViT image tower; {type(visual).__name__} has none")
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.outputs: list[torch.Tensor] = []
        self.handles = [b.register_forward_hook(self._hook) for b in list(blocks)[-n:]]

    def _hook(self, module, inputs, output):
        x = output[0] if isinstance(output, tuple) else output
        if not self.batch_first:
            x = x.transpose(0, 1)
        self.outputs.append(x.float().mean(dim=1))

    def take(self) -> torch.Tensor:
        out = torch.cat(self.outputs, dim=1)
        self.outputs = []
        return torch.nn.functional.normalize(out, dim=-1)

    def close(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def image_features(enc: Encoder, sources: list, batch: int = 64, pooled_blocks: int = 0) -> np.ndarray:
    """L2-normalised image embeddings (n, d); with ``pooled_blocks`` > 0 the mean-pooled tokens of the last
    blocks (normalised) are appended, as the authors' probe did."""
    if not pooled_blocks:
        out = []
        for i in range(0, len(sources), batch):
            out.append(np.asarray(oc.encode_images(enc.model, enc.preprocess,
                                                   [open_image(s) for s in sources[i:i + batch]], batch)))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    pool = _BlockPool(enc.model, pooled_blocks) if pooled_blocks else None
    dev = _device(enc.model)
    out = []
    try:
        for i in range(0, len(sources), batch):
            x = torch.stack([enc.preprocess(open_image(s)) for s in sources[i:i + batch]]).to(dev)
            f = torch.nn.functional.normalize(enc.model.encode_image(x).float(), dim=-1)
            if pool is not None:
                f = torch.cat([f, pool.take()], dim=1)
            out.append(f.cpu().numpy())
    finally:
        if pool is not None:
            pool.close()
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def text_features(enc: Encoder, texts: list[str], batch: int = 64) -> np.ndarray:
    return np.asarray(oc.encode_texts(enc.model, enc.tokenizer, list(texts), batch)).astype(np.float32)
