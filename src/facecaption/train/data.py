"""Training data: a seeded, resumable webdataset stream of (face crop, caption) pairs from the caption shards.

``results/captions/<shard>.tar`` holds ``<key>.jpg`` (aligned face crop) and ``<key>.txt`` (caption). The
stream, per process (rank) and data-loader worker:

* **split by node and worker**: with at least as many shards as readers (ranks x workers) each reader takes
  every k-th shard of a seeded shard order; with fewer, every reader reads all shards and keeps every k-th
  sample, so no worker starves on a small corpus;
* **exact passes** by default: across ranks and workers every training sample is read exactly once per pass
  (tests/test_train_ddp.py); ``train.resampled: true`` instead lets each reader draw shards with replacement
  from its own seeded stream (the webdataset recipe when shards vastly outnumber readers);
* **shuffled with a seed**: a per-reader shuffle buffer driven by ``facecaption.core.rng.stream``;
* **the paper's augmentation**: bicubic resize, horizontal flip, RandAugment, each sample's randomness keyed by
  (seed, pass, sample key), never by order, so a resumed stream produces identical tensors;
* **the text field** ``train.text`` (:data:`TEXTS`): ``caption`` (the LLM rewrite when there is one, else the
  grammar captions), ``grammar``, ``rewritten``, ``released`` (the FaceCaption-15M release's face caption) or
  ``alt_text`` (the image's web alt-text), read from each sample's json (``texts``); when a face has several
  texts in the field (the grammar writes ``captions.per_face`` of them), each pass picks one with a choice keyed
  by (seed, pass, sample key); validation always takes the first;
* **bad input is skipped and counted** (``missing_caption``: no text in the chosen field, ``empty_text``,
  ``bad_image``), never fatal;
* **resumable**: the stream is infinite and batches leave the workers round-robin (PyTorch's in-order
  ``DataLoader``), so global batch ``i`` is batch ``i // W`` of worker ``i % W``; a run resumed after ``n``
  optimiser steps makes every worker skip exactly the batches it had delivered, without augmenting them.

The held-out shards (:mod:`facecaption.core.split`: the one rule, written to ``results/train/split.json``) are
a finite, unshuffled, unaugmented validation stream.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms as T

from facecaption.core import rng as fcrng
from facecaption.core.openclip import MEAN, STD
from facecaption.core.reasons import TrainSkip
from facecaption.core.shards import iter_samples

SKIP_REASONS = tuple(r.value for r in TrainSkip)  # the order of the skip counters


def train_transform(image_size: int, augment: dict):
    steps = [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if augment.get("hflip", 0) > 0:
        steps.append(T.RandomHorizontalFlip(p=augment["hflip"]))
    if augment.get("randaugment_ops", 0) > 0:
        steps.append(T.RandAugment(num_ops=augment["randaugment_ops"], magnitude=augment["randaugment_magnitude"],
                                   interpolation=T.InterpolationMode.BICUBIC))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def eval_transform(image_size: int):
    return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


TEXTS = ("caption", "grammar", "rewritten", "released", "alt_text")


def candidate_texts(sample: dict, text: str) -> list[str] | None:
    """The texts of field ``text`` for a caption-shard sample (None: the sample has none to offer).

    The json's ``texts`` holds every field (``grammar``: the grammar captions; ``rewritten``, ``released``,
    ``alt_text``: zero or one text); ``caption`` is what the shard's ``.txt`` holds, with every grammar caption
    as candidates when no rewrite came back. A shard without ``texts`` (written before train.text existed) offers
    its ``.txt`` as ``caption``."""
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    texts = meta.get("texts") if isinstance(meta, dict) else None
    if not isinstance(texts, dict):
        if text != "caption" or "txt" not in sample:
            return None
        try:
            return [sample["txt"].decode("utf-8")]
        except UnicodeDecodeError:
            return [""]
    if text == "caption":
        return list(texts.get("rewritten") or texts.get("grammar") or [])
    return list(texts.get(text) or [])


def _decode(sample: dict, text: str = "caption", pick: int | None = 0) -> tuple[str | None, str | None, Image.Image | None]:
    """(skip reason or None, caption, image); ``pick``: which candidate text (taken modulo their number)."""
    texts = candidate_texts(sample, text)
    if not texts:
        return "missing_caption", None, None
    caption = str(texts[(pick or 0) % len(texts)]).strip()
    if not caption:
        return "empty_text", None, None
    data = sample.get("jpg") or sample.get("jpeg") or sample.get("png")
    if not data:
        return "bad_image", None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
    except Exception:  # noqa: BLE001 (any undecodable image is skipped and counted)
        return "bad_image", None, None
    return None, caption, image


class CaptionStream(IterableDataset):
    """Infinite (train) or finite (validation) stream of batches ``(images, tokens, skipped[3], keys)``."""

    def __init__(self, shards: list[str], *, tokenizer, image_size: int, batch_size: int, seed: int,
                 train: bool = True, augment: dict | None = None, shuffle_buffer: int = 500,
                 resampled: bool = False, max_samples: int | None = None, text: str = "caption",
                 exclude: frozenset[str] = frozenset()):
        if text not in TEXTS:
            raise ValueError(f"train.text: {text!r} is not one of {', '.join(TEXTS)}")
        self.shards = list(shards)
        self.text = text
        self.exclude = exclude  # sample keys the contamination audit flagged: skipped as "contaminated"
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.augment = augment or {}
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.max_samples = max_samples
        self.rank, self.world = 0, 1
        self.start_batches = 0  # global batches already consumed on this rank (resume)

    # -- readers ---------------------------------------------------------------------------------------------
    def _reader(self) -> tuple[int, int, int, int]:
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + w, self.world * nw, w, nw

    def _raw(self, gid: int, total: int) -> Iterator[tuple[int, dict]]:
        """(pass, sample) forever (train) or once (validation)."""
        n = len(self.shards)
        p = 0
        while True:
            yielded = 0
            if not self.train:
                order, by_sample = list(range(n)), True
            elif self.resampled:
                order = list(fcrng.stream(self.seed, "train-resample", gid, p).integers(0, n, size=n))
                by_sample = False
            else:
                perm = list(fcrng.stream(self.seed, "train-shard-order", p).permutation(n))
                by_sample = n < total
                order = perm if by_sample else perm[gid::total]
            i = 0
            for s in order:
                for sample in iter_samples(self.shards[s]):
                    keep = (i % total == gid) if by_sample else True
                    i += 1
                    if keep:
                        yielded += 1
                        yield p, sample
            if not self.train:
                return
            if yielded == 0 and (by_sample or self.resampled or p > 0):
                raise RuntimeError(f"train error: no samples in the training shards ({n} shards)")
            p += 1

    def _shuffled(self, items: Iterator, gid: int) -> Iterator:
        if not self.train or self.shuffle_buffer <= 1:
            yield from items
            return
        r = random.Random(int(fcrng.stream(self.seed, "train-shuffle", gid).integers(2**63)))
        buf: list = []
        for item in items:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = r.randrange(len(buf))
            buf[j], item = item, buf[j]
            yield item
        r.shuffle(buf)
        yield from buf

    def __iter__(self):
        gid, total, w, nw = self._reader()
        tf = train_transform(self.image_size, self.augment) if self.train else eval_transform(self.image_size)
        skip = 0
        if self.train and self.start_batches > w:
            skip = math.ceil((self.start_batches - w) / nw)  # batches this worker delivered before the resume
        skipped = np.zeros(len(SKIP_REASONS), np.int64)
        images, texts, keys, emitted, seen = [], [], [], 0, 0
        for p, sample in self._shuffled(self._raw(gid, total), gid):
            if self.max_samples is not None and seen >= math.ceil(self.max_samples / total):
                break
            pick = 0 if not self.train else int(fcrng.stream(self.seed, "train-text", p, sample["__key__"]).integers(2**31))
            if sample["__key__"] in self.exclude:
                reason, caption, image = "contaminated", None, None
            else:
                reason, caption, image = _decode(sample, self.text, pick)
            if reason is not None:
                skipped[SKIP_REASONS.index(reason)] += 1
                continue
            seen += 1
            if emitted < skip:
                images.append(None)  # counted, not augmented
            elif self.train:
                sseed = int(fcrng.stream(self.seed, "train-augment", p, sample["__key__"]).integers(2**63))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sseed)
                    images.append(tf(image))
            else:
                images.append(tf(image))
            texts.append(caption)
            keys.append(sample["__key__"])
            if len(images) == self.batch_size:
                if emitted >= skip:
                    yield torch.stack(images), self.tokenizer(texts), torch.from_numpy(skipped.copy()), keys
                skipped[:] = 0  # per-batch counts (those of skipped batches were counted before the resume)
                emitted += 1
                images, texts, keys = [], [], []
        if images and not self.train:
            yield torch.stack(images), self.tokenizer(texts), torch.from_numpy(skipped.copy()), keys


class CaptionData(L.LightningDataModule):
    """The training stream over ``train_shards`` and the validation stream over ``val_shards`` (the held-out
    shards of :func:`facecaption.core.split.make`). The other arguments are the ``train.*`` keys of the same
    names (``resampled``: ``train.resampled is True``; ``text``: the caption field, :data:`TEXTS`)."""

    def __init__(self, train_shards: list[str], val_shards: list[str], *, tokenizer, image_size: int, seed: int,
                 batch_size: int, augment: dict | None = None, shuffle_buffer: int = 500, resampled: bool = False,
                 val_max_samples: int | None = None, num_workers: int = 1, text: str = "caption",
                 exclude: frozenset[str] = frozenset()):
        super().__init__()
        # the shard lists (thousands of paths at scale), the tokenizer (an object) and the excluded keys (the
        # audit's list, as long as it is) are not hyperparameters
        self.save_hyperparameters(ignore=["train_shards", "val_shards", "tokenizer", "exclude"])
        self.exclude = frozenset(exclude)
        self.train_shards, self.val_shards = list(train_shards), list(val_shards)
        self.tokenizer = tokenizer
        self.num_workers = num_workers

    def _world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        h = self.hparams
        rank, world = self._world()
        ds = CaptionStream(self.train_shards, tokenizer=self.tokenizer, image_size=h.image_size,
                           batch_size=h.batch_size, seed=h.seed, train=True, augment=h.augment,
                           shuffle_buffer=h.shuffle_buffer, resampled=bool(h.resampled), text=h.text,
                           exclude=self.exclude)
        ds.rank, ds.world = rank, world
        ds.start_batches = self.trainer.global_step if getattr(self, "trainer", None) is not None else 0
        nw = self.num_workers
        return DataLoader(ds, batch_size=None, num_workers=nw, persistent_workers=False,
                          pin_memory=torch.cuda.is_available(), prefetch_factor=4 if nw else None)

    def val_dataloader(self):
        if not self.val_shards:
            return []
        h = self.hparams
        rank, world = self._world()
        ds = CaptionStream(self.val_shards, tokenizer=self.tokenizer, image_size=h.image_size,
                           batch_size=h.batch_size, seed=h.seed, train=False, max_samples=h.val_max_samples,
                           text=h.text, exclude=self.exclude)
        ds.rank, ds.world = rank, world
        return DataLoader(ds, batch_size=None, num_workers=0)
