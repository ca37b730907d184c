"""Attributes: train a classifier on the labeled set, then predict CelebA attributes for every kept face and
apply the paper's filters.

* ``facecaption attributes_train`` → ``results/attributes/model.pt`` (state_dict) + ``model.json``
  (attributes, arch, input size, normalisation, validation accuracy);
* ``facecaption attributes --shard S`` → ``results/attributes/S.parquet``: per face ``key``, ``p_<Attr>``
  (float32), ``<Attr>`` (int8: 1, 0, or -1 = not confident), ``n_labels``, ``kept``, ``reason``.

The paper's filters (config ``attributes.label_threshold`` / ``min_labels``): a label is kept only when its
probability passes 0.85 on either side (p > 0.85 → 1, p < 0.15 → 0, else -1), and a face is kept only when it
has more than 5 kept labels. Every face of the faces shard gets a row, with the reason when it is dropped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from facecaption.core.config import StageConfig
from facecaption.core.shards import atomic_path, iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

FORMAT = "facecaption-attributes/1"


def apply_filters(probs: np.ndarray, threshold: float, min_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's filters: (labels int8 N×A in {1, 0, -1}, n_labels N, kept N). NaN probabilities are -1."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.full(probs.shape, -1, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        labels[probs > threshold] = 1
        labels[probs < 1.0 - threshold] = 0
    n_labels = (labels >= 0).sum(axis=1).astype(np.int16) if probs.ndim == 2 else np.zeros(0, np.int16)
    return labels, n_labels, n_labels > min_labels


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------
def run_train(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.attributes import data as D
    from facecaption.attributes import train as T

    acfg, seed = cfg["attributes"], cfg["seed"]
    torch.set_num_threads(D.threads())
    split = {s: (io.one(f"{s}_images"), io.one(f"{s}_labels")) for s in ("train", "val")}
    attrs = D.labeled_attributes(read_parquet(split["train"][1]), split["train"][1])
    val_attrs = D.labeled_attributes(read_parquet(split["val"][1]), split["val"][1])
    if val_attrs != attrs:
        raise D.AttributeDataError(f"{split['val'][1]}: attribute columns differ from {split['train'][1]}")
    size = acfg["input_size"]
    t0 = time.time()
    n_train = len(read_parquet(split["train"][1], columns=["key"]))
    if n_train <= acfg["in_memory_max"]:
        x, y, _ = D.load_labeled(*split["train"], attrs, size)
        train_set = (x, y)
    else:
        train_set = D.StreamingLabeled(*split["train"], attrs, size, seed)
    val_x, val_y, _ = D.load_labeled(*split["val"], attrs, size)
    log.info("labeled data: %d train, %d val images, %d attributes (%.1f s)", n_train, len(val_x), len(attrs),
             time.time() - t0)
    t1 = time.time()
    model, info = T.train(acfg, seed, attrs, train_set, val_x, val_y)
    seconds = time.time() - t1  # logged, not stored: the artifacts hold no wall-clock time (same bytes on a rerun)
    model_pt, model_json = io.outputs["model"], io.outputs["card"]
    with atomic_path(model_pt) as tmp:
        torch.save(model.state_dict(), tmp)
    meta = {
        "format": FORMAT, "attributes": attrs, "arch": acfg["arch"], "width": acfg["width"],
        "input_size": size, "mean": list(T.MEAN), "std": list(T.STD), "seed": seed,
        "epochs": acfg["epochs"], "init_weights": acfg.get("weights"), **info,
    }
    with atomic_path(model_json) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    log.info("classifier: mean val accuracy %.4f over %d attributes, trained in %.0f s on %d threads",
             info["val_accuracy_mean"], len(attrs), seconds, torch.get_num_threads())
    return 0


def load_model(model_pt: str, model_json: str):
    """(model in eval mode, meta) from the artifacts; the state_dict is read with weights_only=True."""
    from facecaption.attributes.model import build

    meta = json.loads(Path(model_json).read_text())
    model = build(meta["arch"], len(meta["attributes"]), meta["width"])
    model.load_state_dict(torch.load(model_pt, map_location="cpu", weights_only=True))
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------------------
def predict_shard(cfg: dict, faces_tar: str, faces_parquet: str, model_pt: str, model_json: str) -> pd.DataFrame:
    from facecaption.attributes import data as D
    from facecaption.attributes import train as T

    acfg = cfg["attributes"]
    model, meta = load_model(model_pt, model_json)
    device = T.device_of(acfg)
    model.to(device)
    attrs, size = meta["attributes"], meta["input_size"]
    faces = read_parquet(faces_parquet)
    keys = list(faces["key"]) if "key" in faces.columns else []
    wanted = set(keys)
    reasons: dict[str, str] = {}
    index: dict[str, int] = {}
    images: list[np.ndarray] = []
    errors: list = []
    for sample in iter_samples(faces_tar, errors):
        key = sample["__key__"]
        if key not in wanted or key in index:
            continue
        if "jpg" not in sample:
            reasons[key] = "no_crop"
            continue
        try:
            images.append(D.decode(sample["jpg"], size))
        except Exception as exc:  # noqa: BLE001 (a broken crop is recorded, never fatal)
            reasons[key] = f"unreadable_crop: {type(exc).__name__}"
            continue
        index[key] = len(images) - 1
    for e in errors:
        log.warning("%s: %s (%s)", faces_tar, e["reason"], e["key"])
    probs_found = np.zeros((0, len(attrs)), np.float32)
    if images:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        probs_found = T.predict(model, x, acfg["predict_batch_size"], device)
    probs = np.full((len(keys), len(attrs)), np.nan, np.float32)
    for i, key in enumerate(keys):
        if key in index:
            probs[i] = probs_found[index[key]]
    labels, n_labels, kept = apply_filters(probs, acfg["label_threshold"], acfg["min_labels"])
    reason = []
    for i, key in enumerate(keys):
        if key in index:
            reason.append("" if kept[i] else f"too_few_labels: {int(n_labels[i])} <= {acfg['min_labels']}")
        else:
            reason.append(reasons.get(key, "no_crop"))
            kept[i] = False
    cols: dict = {"key": pd.Series(keys, dtype="string")}
    for j, a in enumerate(attrs):
        cols[f"p_{a}"] = probs[:, j]
    for j, a in enumerate(attrs):
        cols[a] = labels[:, j]
    cols["n_labels"] = n_labels
    cols["kept"] = kept.astype(bool)
    cols["reason"] = pd.Series(reason, dtype="string")
    return pd.DataFrame(cols)


def run(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.attributes import data as D

    torch.set_num_threads(D.threads())
    df = predict_shard(cfg, io.one("crops"), io.one("faces"), io.one("model"), io.one("card"))
    write_parquet(df, io.outputs["attributes"])
    log.info("attributes %s: %d faces, %d kept (%.1f %%)", io.shard, len(df), int(df["kept"].sum()),
             100.0 * df["kept"].mean() if len(df) else 0.0)
    return 0
