"""The one open_clip loader: FLIP's architectures, checkpoints (ours and open_clip's hub layout), encoders.

Importing this module registers the tiny architectures defined as data in ``model_configs/`` (e.g.
``FLIP-Tiny``) with open_clip, so ``open_clip.create_model_and_transforms("FLIP-Tiny", pretrained=PATH)``
works in any process that imported ``facecaption.core.openclip`` (or that called
``open_clip.add_model_config(<package>/core/model_configs)`` itself).

An architecture trained at an image size other than its config's (``align.size``) gets a derived name,
``<arch>-<size>px`` (see :func:`arch_for`); the exported checkpoint records the architecture name and
config (``flip.pt`` = ``{"state_dict": ..., "facecaption": {"arch", "model_cfg", ...}}``), which
:func:`load` uses to re-register it.

Public API, used by the train, evaluation and quality stages::

    model, preprocess, tokenizer = load(checkpoint_or_None, arch, device="cpu", image_size=None)
    img = encode_images(model, preprocess, pil_images, batch=64)   # (N, D) float32, L2-normalised
    txt = encode_texts(model, tokenizer, texts, batch=256)          # (N, D) float32, L2-normalised
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip import factory as _oc_factory

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
BASELINE_SEED = 0  # random-init baseline (checkpoint=None): always the same weights
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's (OpenAI) normalisation
STD = (0.26862954, 0.26130258, 0.27577711)


def _register() -> None:
    if not any(Path(p) == CONFIG_DIR for p in _oc_factory._MODEL_CONFIG_PATHS):
        open_clip.add_model_config(CONFIG_DIR)


_register()


class ModelError(RuntimeError):
    """A problem with an architecture or weights file, reported as one line."""


def model_config(arch: str) -> dict:
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ModelError(f"train error: train.arch: unknown open_clip architecture {arch!r}; "
                         f"e.g. FLIP-Tiny, ViT-B-16 (open_clip.list_models())")
    return cfg


def _image_size(cfg: dict) -> int:
    size = cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def register_config(name: str, cfg: dict) -> None:
    """Register an architecture config under ``name`` (in this process)."""
    _register()
    _oc_factory._MODEL_CONFIGS[name] = copy.deepcopy(cfg)


def add_config_file(path: str | os.PathLike, arch: str) -> str:
    """Register the architecture config file ``path`` (named after its stem); returns ``arch`` when open_clip
    knows it, else the file's architecture name."""
    open_clip.add_model_config(Path(path))
    return arch if arch in open_clip.list_models() else Path(path).stem


def arch_for(arch: str, image_size: int | None) -> str:
    """The architecture name for ``arch`` at ``image_size``: ``arch`` itself if its config already has that
    size, otherwise a derived ``<arch>-<size>px`` config (registered here)."""
    cfg = model_config(arch)
    if image_size is None or _image_size(cfg) == int(image_size):
        return arch
    patch = cfg["vision_cfg"].get("patch_size")
    if patch and int(image_size) % int(patch):
        raise ModelError(f"train error: image size {image_size} (align.size) is not a multiple of the "
                         f"patch size {patch} of {arch}")
    name = f"{arch}-{int(image_size)}px"
    derived = copy.deepcopy(cfg)
    derived["vision_cfg"]["image_size"] = int(image_size)
    register_config(name, derived)
    return name


def create(arch: str, seed: int = BASELINE_SEED, init: str | None = None):
    """A fresh open_clip model (random init with ``seed``, or local weights from ``init``) + transforms."""
    if init is not None and not os.path.isfile(init):
        raise ModelError(f"train error: train.init: weights file {init} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=init)
    return model, preprocess


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Our checkpoint file: ``{"state_dict": ..., "facecaption": {...}}`` (plain state dicts work too)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    return {"state_dict": obj, "facecaption": {}}


def cpu_state(model: torch.nn.Module) -> dict:
    """The model's state dict on the CPU, floating tensors in float32 (what both exports write)."""
    return {k: v.detach().to("cpu", torch.float32).clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


def save_checkpoint(model: torch.nn.Module, arch: str, path: str | os.PathLike, **meta) -> None:
    """Export an open_clip state dict that ``open_clip.create_model_and_transforms(arch, pretrained=path)`` loads."""
    from facecaption.core.shards import atomic_path

    state = cpu_state(model)
    payload = {"state_dict": state, "facecaption": {"arch": arch, "model_cfg": model_config(arch), **meta}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


HUB_CONFIG, HUB_WEIGHTS = "open_clip_config.json", "open_clip_pytorch_model.bin"  # open_clip's hub file names


def save_open_clip_folder(model: torch.nn.Module, arch: str, folder: str | os.PathLike, **meta) -> None:
    """Export in open_clip's hub layout: ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
    ``open_clip_pytorch_model.bin`` (the state dict). Any process with open_clip 3.x loads it, whatever the
    architecture (a derived ``<arch>-<size>px`` one too) and without importing facecaption:
    ``open_clip.create_model_and_transforms("local-dir:" + folder)``; ``huggingface_hub.upload_folder`` publishes
    the same folder for ``hf-hub:``. The preprocessing is the train stage's evaluation transform (square
    resize, bicubic, OpenAI's mean and std)."""
    import json

    from facecaption.core.shards import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = cpu_state(model)
    config = {"model_cfg": model_config(arch),
              "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                 "resize_mode": "squash"},
              "facecaption": {"arch": arch, **meta}}
    with atomic_path(folder / HUB_WEIGHTS) as tmp:
        torch.save(state, tmp)
    with atomic_path(folder / HUB_CONFIG) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=1, sort_keys=True))


def load(checkpoint: str | None, arch: str, device: str = "cpu", image_size: int | None = None):
    """``(model, preprocess, tokenizer)`` in eval mode on ``device``.

    ``checkpoint=None`` gives the random-init baseline (fixed seed). A checkpoint written by the train
    stage knows its architecture (including a derived image size), so ``arch`` is only a fallback there.
    """
    if checkpoint is not None:
        meta = read_checkpoint(checkpoint).get("facecaption", {})
        if meta.get("arch") and meta.get("model_cfg"):
            arch = meta["arch"]
            if open_clip.get_model_config(arch) is None:
                register_config(arch, meta["model_cfg"])
    if image_size is not None:
        arch = arch_for(arch, image_size)
    model, preprocess = create(arch, init=checkpoint)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return model, preprocess, tokenizer


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model, preprocess, pil_images, batch: int = 64) -> np.ndarray:
    """L2-normalised image embeddings ``(N, D)`` for a list of PIL images."""
    model.eval()
    dev, out = _device(model), []
    images = list(pil_images)
    for i in range(0, len(images), batch):
        x = torch.stack([preprocess(im.convert("RGB")) for im in images[i:i + batch]]).to(dev)
        out.append(_normalise(model.encode_image(x)))
    dim = model.text_projection.shape[-1] if getattr(model, "text_projection", None) is not None else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch: int = 256) -> np.ndarray:
    """L2-normalised text embeddings ``(N, D)`` for a list of strings."""
    model.eval()
    dev, out = _device(model), []
    texts = list(texts)
    for i in range(0, len(texts), batch):
        out.append(_normalise(model.encode_text(tokenizer(texts[i:i + batch]).to(dev))))
    dim = model.text_projection.shape[-1] if getattr(model, "text_projection", None) is not None else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
