"""Stage ``evaluate``: the paper's two face tasks with frozen encoders, plus zero-shot attributes.

* linear probe: one linear layer (BCE, L2 chosen on the validation split) on frozen image features of each
  attribute set (the pipeline's labeled set, plus CelebA / LFWA / CSV folders from ``evaluate.datasets``),
  trained with a share of the training labels (``evaluate.label_fractions``; one random subset per seed),
  scored on the test split: mean and per-attribute accuracy, mean ± std over seeds;
* retrieval: image→text and text→image R@1/5/10 on the held-out caption shards and keys the train stage
  wrote (``results/train/split.json``, :mod:`facecaption.core.split`), mean ± std over random subsets (one per
  seed) and on the whole set; with no held-out shard there is no retrieval, and the metrics say why
  (``retrieval_note``): training captions are never scored as held-out ones;
* zero-shot attributes: a prompt and its negation per attribute, scored with the text encoder;
* slices (``evaluate.slices``, e.g. Male × Young and Pale_Skin): the probe's mean test accuracy (the test
  faces sliced by their ground-truth labels) and retrieval R@k (the held-out faces sliced by the attribute
  stage's confident labels) per slice, the gap between the best and the worst slice and its spread over seeds;
  a slice with fewer than ``evaluate.slice_min`` faces is reported as too few, not as a number.

No choice sees a test split: the probe's L2 strength is chosen on the validation split (:mod:`.probe`), the
features are standardised with training images, FLIP is the train stage's final weights (no checkpoint is
picked on held-out data) and LFWA's validation identities are carved from its training split. A choice on an
edge of its grid is reported (``wd_at_edge``). Splits that share an image, a key or a known identity stop
the evaluation (:func:`facecaption.evaluate.data.check_disjoint`).

Every model is evaluated the same way: FLIP (``results/train/flip.pt``), the same architecture with random
weights, and local open_clip weights named in ``evaluate.baselines``. The paper's own numbers are added as
quoted rows. Output: ``results/reports/evaluate/`` (metrics.json, tables/*.json, figures/*.png, and the raw
runs as CSV).
"""

from __future__ import annotations

import gc
import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facecaption.core import reference as ref
from facecaption.core import rng as rngmod
from facecaption.core import split as splitmod
from facecaption.core.config import StageConfig
from facecaption.core.stage import StageIO
from facecaption.evaluate import data as D
from facecaption.evaluate import encoders as E
from facecaption.evaluate import metrics as M
from facecaption.evaluate import probe as P
from facecaption.evaluate import zeroshot as Z
from facecaption.evaluate.data import EvaluateInputError

log = logging.getLogger(__name__)

FLIP, RANDOM = "FLIP", "random init"
KS = (1, 5, 10)
RET_KEYS = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS]


def frac_label(f: float) -> str:
    """0.01 -> "1", 0.5 -> "50", 1.0 -> "100" (percent, as a metrics key)."""
    return f"{f * 100:.6g}"


def pm(mean: float, std: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# -- inputs ----------------------------------------------------------------------------------------------
def models_to_run(cfg: dict, trained: str) -> list[tuple[str, str, str | None]]:
    """(name, arch, checkpoint) per model, FLIP's checkpoint ``evaluate.checkpoint`` or else ``trained`` (the
    train stage's); every file must exist (one line naming the first missing one)."""
    ev, tr = cfg["evaluate"], cfg["train"]
    arch = ev.get("arch") or tr.get("arch")
    if not arch:
        raise EvaluateInputError("evaluate.arch and train.arch are both unset: no architecture to evaluate")
    ckpt = ev.get("checkpoint") or trained
    if not Path(ckpt).exists():
        raise EvaluateInputError(f"{ckpt}: FLIP checkpoint missing; run the train stage or set evaluate.checkpoint")
    arch = E.checkpoint_arch(ckpt, arch)
    models = [(FLIP, arch, ckpt)]
    if ev["random_baseline"]:
        models.append((RANDOM, arch, None))
    for b in ev["baselines"]:
        if not Path(b["path"]).exists():
            raise EvaluateInputError(f"{b['path']}: weights of baseline {b['name']!r} (evaluate.baselines) missing")
        models.append((b["name"], b["arch"], b["path"]))
    names = [m[0] for m in models]
    if len(set(names)) != len(names):
        raise EvaluateInputError(f"evaluate.baselines: model names must be distinct, got {names}")
    return models


def held_out(split_file: str, pairs: list[str]) -> splitmod.Split:
    """The train stage's split (:mod:`facecaption.core.split`), checked against this run's caption shards
    ``pairs``: retrieval uses exactly its held-out shards and keys."""
    try:
        split = splitmod.read(split_file)
        splitmod.check_shards(split, pairs, split_file)
    except splitmod.SplitError as exc:
        raise EvaluateInputError(str(exc)) from None
    return split


def labeled_files(io: StageIO) -> dict[str, tuple[str, str]]:
    """The labeled stage's splits: ``{split: (images tar, labels parquet)}``."""
    return {s: (io.one(f"{s}_images"), io.one(f"{s}_labels")) for s in D.SPLITS}


def datasets(cfg: dict, labeled: dict[str, tuple[str, str]]) -> list[D.LabeledSet]:
    ev = cfg["evaluate"]
    sets = [D.read_labeled(labeled, ev.get("labeled_name"))]
    sets += [D.read_dataset(spec, cfg["seed"], cfg["align"]) for spec in ev["datasets"]]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise EvaluateInputError(f"evaluate.datasets: dataset names must be distinct, got {names}")
    for s in sets:
        for split, n in s.sizes().items():
            if n == 0:
                raise EvaluateInputError(f"{s.name}: the {split} split is empty")
        D.check_disjoint(s)  # stops on a shared key, image (pixels) or identity; keeps what it checked
    return sets


def fractions(cfg: dict, name: str) -> list[float]:
    """The label fractions probed on dataset ``name``: its own ``label_fractions`` (the paper's differ between
    CelebA and LFWA), else ``evaluate.label_fractions``."""
    ev = cfg["evaluate"]
    spec = next((d for d in ev["datasets"] if d["name"] == name), {})
    return list(spec.get("label_fractions") or ev["label_fractions"])


def all_fractions(cfg: dict, sets) -> list[float]:
    """Every fraction probed on any dataset, ascending: the columns of the probe table."""
    return sorted({f for ds in sets for f in fractions(cfg, ds.name)})


# -- slices ------------------------------------------------------------------------------------------------
def group_key(group) -> str:
    """["Male", "Young"] -> "Male+Young" (a metrics key)."""
    return "+".join(group)


def slice_names(group) -> list[str]:
    """The slices of a group of attributes: every combination of 1/0, "Male=1,Young=1" first."""
    return [",".join(f"{a}={v}" for a, v in zip(group, combo)) for combo in itertools.product((1, 0), repeat=len(group))]


def slice_masks(values: np.ndarray, group) -> dict[str, np.ndarray]:
    """Boolean masks over the rows of ``values`` (rows, len(group)) of 1/0 labels (-1 = unknown: in no slice)."""
    values = np.asarray(values).reshape(len(values), len(group))
    return {name: (values == np.array(combo)).all(1)
            for name, combo in zip(slice_names(group), itertools.product((1, 0), repeat=len(group)))}


def probe_slices(pred: np.ndarray, truth: np.ndarray, attributes: list[str], groups) -> dict:
    """Per group and slice of the test faces (by their ground-truth labels ``truth``): ``[n, accuracy]``, the mean
    over attributes of the accuracy within the slice (None when empty); a group naming an attribute the
    dataset lacks is left out."""
    correct = np.asarray(pred).astype(bool) == np.asarray(truth).astype(bool)
    out = {}
    for group in groups:
        if not all(a in attributes for a in group):
            continue
        cols = [attributes.index(a) for a in group]
        out[group_key(group)] = {name: [int(m.sum()), float(correct[m].mean()) if m.any() else None]
                                 for name, m in slice_masks(np.asarray(truth)[:, cols], group).items()}
    return out


def retrieval_slices(hits: dict, face_values: dict[str, np.ndarray], groups) -> dict:
    """Per group and slice: ``{"n": faces, key: recall}`` from per-query ``hits`` (:func:`metrics.retrieval_hits`)
    of one set of faces. Image→text: the slice's faces as queries; text→image: the distinct captions carried by
    a face of the slice (the gallery stays the whole set, so slices of any size compare)."""
    out = {}
    for group in groups:
        g = group_key(group)
        if g not in face_values:
            continue
        out[g] = {}
        for name, m in slice_masks(face_values[g], group).items():
            caps = np.unique(hits["owner"][m])
            r = {"n": int(m.sum())}
            for k in KS:
                r[f"i2t_r{k}"] = float(hits["i2t"][k][m].mean()) if m.any() else None
                r[f"t2i_r{k}"] = float(hits["t2i"][k][caps].mean()) if len(caps) else None
            out[g][name] = r
    return out


class _HeldOut:
    """The retrieval test faces as the audit names them (their keys are filled in by :func:`read_contaminated`)."""
    name = splitmod.HELD_OUT_SET
    splits: dict = {}


def read_contaminated(path: str | None, sets, held_out_keys: list[str] | None = None) -> dict[str, dict]:
    """The audit's contaminated test items (``results/audit/contaminated.parquet``) per dataset: ``{name: {"mask":
    bool per test row, "near_copy": n, "identity": n}}``; empty without the file (the audit is not in the run)."""
    if not path or not Path(path).exists():
        return {}
    table = pd.read_parquet(path)
    out = {}
    for ds in [*sets, _HeldOut()]:
        rows = table[table["dataset"] == ds.name]
        keys = list(held_out_keys or []) if ds.name == splitmod.HELD_OUT_SET else ds.splits["test"].keys
        flagged = set(rows["key"])
        out[ds.name] = {"mask": np.array([k in flagged for k in keys], bool),
                        "near_copy": int(rows["near_copy"].sum()), "identity": int(rows["identity"].sum()),
                        "unknown_keys": len(flagged - set(keys))}
    return out


def read_face_labels(paths: list[str] | None, held_out: list[str], keys: list[str], groups) -> tuple[dict, str]:
    """The attribute stage's labels (1/0, -1 = not confident) of the held-out faces ``keys``, per slice group:
    ``({group key: (faces, len(group)) array}, reason)``; the reason says why there are none (the input was
    not given, a table is missing, an attribute is not predicted)."""
    if not keys:
        return {}, "no held-out captioned faces"
    if not paths:
        return {}, "the attribute tables (results/attributes/<shard>.parquet) are not an input of this stage"
    by_shard = {Path(p).name.split(".")[0]: p for p in paths}
    wanted = sorted({a for g in groups for a in g})
    frames = []
    for tar in held_out:
        p = by_shard.get(Path(tar).name.split(".")[0])
        if p is None or not Path(p).exists():
            return {}, f"{p or Path(tar).name}: no attribute table for held-out shard {Path(tar).name}"
        try:
            from facecaption.core.shards import read_parquet  # noqa: PLC0415

            frames.append(read_parquet(p))
        except Exception as exc:  # noqa: BLE001 - an unreadable table: no retrieval slices, and why
            return {}, f"{p}: unreadable ({type(exc).__name__})"
    df = pd.concat(frames, ignore_index=True)
    if "key" not in df:
        return {}, "the attribute tables have no key column"
    df = df.drop_duplicates("key").set_index("key")
    missing = [k for k in keys if k not in df.index]
    if missing:
        return {}, f"held-out face {missing[0]} has no row in the attribute tables"
    out, absent = {}, [a for a in wanted if a not in df.columns]
    for group in groups:
        if any(a in absent for a in group):
            continue
        out[group_key(group)] = df.loc[keys, list(group)].to_numpy(dtype=int)
    return out, (f"attribute(s) {', '.join(absent)} not in the attribute tables" if absent else "")


# -- one model ---------------------------------------------------------------------------------------------
def evaluate_model(enc: E.Encoder, sets: list[D.LabeledSet], captions, cfg: dict, face_values: dict | None = None,
                   contaminated: dict | None = None) -> dict:
    """One model on every set: probe runs (with slice accuracies, and the accuracy without the audit's
    ``contaminated`` test rows), zero-shot, retrieval (with slices when ``face_values``, the held-out faces'
    attribute labels per slice group, are given)."""
    ev, seed = cfg["evaluate"], cfg["seed"]
    groups = ev["slices"]
    pooled = ev["pooled_blocks"] if ev["probe_layers"] == "pooled" else 0
    embed_dim = E.text_features(enc, ["a photo of a face"], 1).shape[1]
    out = {"probe": {}, "zeroshot": {}, "retrieval": None}
    for ds in sets:
        feats = {s: E.image_features(enc, ds.splits[s].sources, ev["batch"], pooled) for s in D.SPLITS}
        labels = {s: ds.splits[s].labels for s in D.SPLITS}
        runs = []
        for frac in fractions(cfg, ds.name):
            result_full = None
            for run in range(ev["seeds"]):
                idx = P.subset(len(labels["train"]), frac, seed, ds.name, run)
                if frac >= 1.0 and result_full is not None:
                    res = result_full  # every seed sees the same labels: the fit is the same
                else:
                    res = P.fit_and_score((feats["train"][idx], labels["train"][idx]),
                                          (feats["val"], labels["val"]), (feats["test"], labels["test"]),
                                          ev["weight_decays"], ev["probe_iterations"], norm=feats["train"])
                    result_full = res if frac >= 1.0 else None
                runs.append({"fraction": frac, "run": run, "n_train": len(idx), "decay": res["decay"],
                             "decays": res["decays"], "at_edge": res["at_edge"], "edge_top": res["edge_top"],
                             "edge_bottom": res["edge_bottom"],
                             "val_accuracy": res["val_accuracy"], "test_accuracy": res["test_accuracy"],
                             "slices": probe_slices(res["test_pred"], labels["test"], ds.attributes, groups),
                             "clean_accuracy": _clean(res["test_pred"], labels["test"], (contaminated or {}).get(ds.name)),
                             "majority": P.majority(labels["train"][idx], labels["test"])})
        out["probe"][ds.name] = runs
        if ev["zero_shot"]:
            out["zeroshot"][ds.name] = Z.score(feats["test"][:, :embed_dim],
                                               lambda t: E.text_features(enc, t, ev["batch"]),
                                               ds.attributes, labels["test"])
    keys, images, texts = captions
    if keys:
        img = E.image_features(enc, images, ev["batch"])
        txt = E.text_features(enc, texts, ev["batch"])
        full = M.retrieval(img, txt, texts, KS)
        subs, slices = [], []
        m = max(2, int(round(ev["retrieval_subset"] * len(keys))))
        for run in range(ev["seeds"]):
            idx = np.sort(rngmod.stream(seed, "evaluate/retrieval_subset", run).choice(len(keys), m, replace=False))
            hits = M.retrieval_hits(img[idx], txt[idx], [texts[i] for i in idx], KS)
            subs.append({**{f"i2t_r{k}": float(v.mean()) for k, v in hits["i2t"].items()},
                         **{f"t2i_r{k}": float(v.mean()) for k, v in hits["t2i"].items()}})
            if face_values:
                slices.append(retrieval_slices(hits, {g: v[idx] for g, v in face_values.items()}, groups))
        slice_n = {group_key(g): {name: int(mk.sum()) for name, mk in slice_masks(face_values[group_key(g)], g).items()}
                   for g in groups if group_key(g) in (face_values or {})}
        out["retrieval"] = {"full": full, "runs": subs, "slices": slices, "slice_n": slice_n}
        drop = (contaminated or {}).get(splitmod.HELD_OUT_SET)
        if drop and drop["mask"].any() and (~drop["mask"]).sum() >= 2:  # without the audit's flagged faces
            keep = np.flatnonzero(~drop["mask"])
            out["retrieval"]["clean"] = M.retrieval(img[keep], txt[keep], [texts[i] for i in keep], KS)
    return out


def _clean(pred: np.ndarray, truth: np.ndarray, drop: dict | None) -> np.ndarray | None:
    """Per-attribute test accuracy without the contaminated rows (None when nothing is dropped)."""
    if not drop or not drop["mask"].any() or drop["mask"].all():
        return None
    keep = ~drop["mask"]
    return M.accuracy_per_column(pred[keep], truth[keep])


# -- summaries, tables, figure ------------------------------------------------------------------------------
def summarise(results: dict, sets: list[D.LabeledSet], cfg: dict) -> dict:
    probe, per_attr, zs, ret = {}, {}, {}, {}
    for ds in sets:
        fracs = fractions(cfg, ds.name)
        probe[ds.name], per_attr[ds.name], zs[ds.name] = {}, {}, {}
        for model, res in results.items():
            probe[ds.name][model] = {}
            for f in fracs:
                runs = [r for r in res["probe"][ds.name] if r["fraction"] == f]
                means = np.array([r["test_accuracy"].mean() for r in runs]) * 100
                probe[ds.name][model][frac_label(f)] = {
                    "mean": float(means.mean()), "std": float(means.std()), "runs": means.tolist(),
                    "n_train": runs[0]["n_train"], "decay": [r["decay"] for r in runs],
                    # the median L2 choice of a run on an edge of evaluate.weight_decays; shares of attributes
                    # whose own choice is the grid's largest / smallest value (mean over runs)
                    "wd_at_edge": any(r["at_edge"] for r in runs), "wd_edge_runs": sum(r["at_edge"] for r in runs),
                    "wd_edge_top": float(np.mean([r["edge_top"] for r in runs])),
                    "wd_edge_bottom": float(np.mean([r["edge_bottom"] for r in runs]))}
                if runs[0].get("clean_accuracy") is not None:  # without the audit's contaminated test items
                    clean = np.array([r["clean_accuracy"].mean() for r in runs]) * 100
                    probe[ds.name][model][frac_label(f)]["clean"] = {"mean": float(clean.mean()),
                                                                     "std": float(clean.std())}
                if model == next(iter(results)):  # the majority answer depends on the labels only
                    maj = np.array([r["majority"].mean() for r in runs]) * 100
                    probe[ds.name].setdefault("majority class", {})[frac_label(f)] = {
                        "mean": float(maj.mean()), "std": float(maj.std()), "runs": maj.tolist(),
                        "n_train": runs[0]["n_train"]}
            top = [r for r in res["probe"][ds.name] if r["fraction"] == max(fracs)]
            per_attr[ds.name][model] = dict(zip(ds.attributes, np.mean([r["test_accuracy"] for r in top], 0) * 100))
            per_attr[ds.name]["majority class"] = dict(zip(ds.attributes, np.mean([r["majority"] for r in top], 0) * 100))
            if ds.name in res["zeroshot"]:
                z = res["zeroshot"][ds.name]
                zs[ds.name][model] = {"accuracy": float(z["accuracy"].mean() * 100),
                                      "balanced_accuracy": float(np.nanmean(z["balanced_accuracy"]) * 100),
                                      "per_attribute": dict(zip(ds.attributes, z["accuracy"] * 100))}
        # probe order: models first, then the majority row last
        probe[ds.name] = {k: probe[ds.name][k] for k in [*results, "majority class"]}
    for model, res in results.items():
        if res["retrieval"] is None:
            continue
        ret[model] = {}
        for k in RET_KEYS:
            vals = np.array([r[k] for r in res["retrieval"]["runs"]]) * 100
            ret[model][k] = {"mean": float(vals.mean()), "std": float(vals.std()), "full": res["retrieval"]["full"][k] * 100}
            if "clean" in res["retrieval"]:
                ret[model][k]["clean"] = res["retrieval"]["clean"][k] * 100
    zs = {k: v for k, v in zs.items() if v}
    return {"probe": probe, "per_attribute": per_attr, "zeroshot": zs, "retrieval": ret}


def probe_edges(s: dict, grid) -> list[dict]:
    """Every (dataset, model, label share) whose L2 choice landed on an edge of the grid in some run."""
    hi, lo = max(grid), min(grid)
    out = []
    for dname, by_model in s["probe"].items():
        for model, by_f in by_model.items():
            for f, v in by_f.items():
                if v.get("wd_at_edge"):
                    sides = sorted({"largest" if d >= hi else "smallest" for d in v["decay"] if d >= hi or d <= lo})
                    out.append({"dataset": dname, "model": model, "fraction": f, "runs": v["wd_edge_runs"],
                                "side": "/".join(sides) or "grid of fewer than 3 values"})
    return out


def _spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std())}


def summarise_slices(results: dict, sets, cfg: dict, retrieval_reason: str) -> dict:
    """Per slice: the probe's mean test accuracy (%, the largest label share of each dataset) and retrieval
    R@k (%) with mean ± std over seeds; per group the gap between the best and the worst slice (per seed, then
    mean ± std); slices with fewer than ``evaluate.slice_min`` faces are reported with their count only."""
    ev = cfg["evaluate"]
    groups, small = ev["slices"], ev["slice_min"]
    out = {"groups": [list(g) for g in groups], "min_items": small, "probe": {}, "retrieval": {}, "skipped": {},
           "probe_fraction": {d.name: frac_label(max(fractions(cfg, d.name))) for d in sets}}
    for ds in sets:
        for g in groups:
            if not all(a in ds.attributes for a in g):
                lacking = ", ".join(a for a in g if a not in ds.attributes)
                out["skipped"][f"probe.{ds.name}.{group_key(g)}"] = f"{ds.name} has no label for {lacking}"
        top = max(fractions(cfg, ds.name))
        out["probe"][ds.name] = {}
        out.setdefault("probe_by_fraction", {})[ds.name] = {}
        for model, res in results.items():
            by_f = {frac_label(f): _probe_slices(res["probe"][ds.name], f, small) for f in fractions(cfg, ds.name)}
            out["probe"][ds.name][model] = by_f[frac_label(top)]
            # every label share, the gaps only: at 100 % every seed fits the same labels (no spread)
            out["probe_by_fraction"][ds.name][model] = {f: {g: v["gap"] for g, v in by.items()} for f, by in by_f.items()}
    if retrieval_reason:
        out["skipped"]["retrieval"] = retrieval_reason
    for model, res in results.items():
        if res["retrieval"] is None or not res["retrieval"].get("slices"):
            continue
        runs = res["retrieval"]["slices"]
        by_group = {}
        for g in runs[0]:
            full_n = {name: results_n for name, results_n in res["retrieval"]["slice_n"][g].items()}
            sl, per_run = {}, {k: [] for k in RET_KEYS}
            for name in runs[0][g]:
                n = full_n[name]
                if n < small or any(r[g][name]["n"] == 0 for r in runs):
                    sl[name] = {"n": n, "too_few": True}
                    continue
                sl[name] = {"n": n}
                for k in RET_KEYS:
                    vals = [r[g][name][k] * 100 for r in runs]
                    sl[name][k] = {**_spread(vals), "runs": vals}
                    per_run[k].append(vals)
            ok = [n for n, v in sl.items() if not v.get("too_few")]
            gap = {k: _spread(np.ptp(np.array(per_run[k]), 0)) for k in RET_KEYS} if len(ok) >= 2 else None
            by_group[g] = {"slices": sl, "gap": gap}
        out["retrieval"][model] = by_group
    return out


def _probe_slices(runs: list[dict], frac: float, small: int) -> dict:
    """One model's probe runs at label share ``frac``, per slice group: the slices (mean ± std over runs, %) and
    the gap (:func:`_gap`)."""
    runs = [r for r in runs if r["fraction"] == frac]
    by_group = {}
    for g in runs[0]["slices"]:
        sl, per_run = {}, []
        for name, (n, _) in runs[0]["slices"][g].items():
            if n < small:
                sl[name] = {"n": n, "too_few": True}
                continue
            vals = [r["slices"][g][name][1] * 100 for r in runs]
            sl[name] = {"n": n, **_spread(vals), "runs": vals}
            per_run.append(vals)
        by_group[g] = _gap(sl, per_run)
    return by_group


def _gap(sl: dict, per_run: list[list[float]]) -> dict:
    """A group's slices with the gap between its best and worst slice (per run, then mean ± std over runs)."""
    ok = {n: v for n, v in sl.items() if not v.get("too_few")}
    if len(ok) < 2:
        return {"slices": sl, "gap": None}
    best, worst = max(ok, key=lambda n: ok[n]["mean"]), min(ok, key=lambda n: ok[n]["mean"])
    return {"slices": sl, "gap": _spread(np.ptp(np.array(per_run), 0)), "best": best, "worst": worst}


def acceptance(s: dict, default_set: str) -> dict:
    """FLIP vs random weights: margins of the means and the larger of the two seed spreads."""
    out = {}
    p = s["probe"][default_set]
    if FLIP in p and RANDOM in p:
        rows = {}
        for f, v in p[FLIP].items():
            r = p[RANDOM][f]
            margin, spread = v["mean"] - r["mean"], max(v["std"], r["std"])
            rows[f] = {"margin": margin, "spread": spread, "beats": bool(margin > 0 and margin > spread)}
        out["probe"] = rows
        out["probe_beats_random"] = all(r["beats"] for r in rows.values())
    if FLIP in s["retrieval"] and RANDOM in s["retrieval"]:
        rows = {}
        for k in ("i2t_r5", "t2i_r5"):
            a, b = s["retrieval"][FLIP][k], s["retrieval"][RANDOM][k]
            margin, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
            rows[k] = {"margin": margin, "spread": spread, "beats": bool(margin > 0 and margin > spread)}
        out["retrieval"] = rows
        out["retrieval_beats_random"] = all(r["beats"] for r in rows.values())
    return out


def _parse_quoted(cell):
    try:
        return float(cell)
    except (TypeError, ValueError):
        return cell  # e.g. "98.04*"


def probe_table(s: dict, sets, fracs) -> tuple[list, list, list[int]]:
    cols = ["model", "data", *[f"{frac_label(f)} % labels" for f in fracs], "wd_at_edge"]
    rows = []
    for ds in sets:  # a dataset probed at other fractions leaves those cells empty
        for model, by_f in s["probe"][ds.name].items():
            edge = None if model == "majority class" else (
                ", ".join(f"{f} %" for f, v in by_f.items() if v.get("wd_at_edge")) or "no")
            rows.append([model, ds.name, *[pm(by_f[frac_label(f)]["mean"], by_f[frac_label(f)]["std"])
                                           if frac_label(f) in by_f else None for f in fracs], edge])
    quoted = []
    where = {"CelebA": {0.01: 1, 0.1: 2, 1.0: 3}, "LFWA": {0.1: 4, 0.5: 5, 1.0: 6}}
    for row in ref.PROBE:
        if row[0] not in ("FaRL", "CLIP", "FLIP"):
            continue
        for data, idx in where.items():
            quoted.append(len(rows))
            rows.append([f"{row[0]} (paper)", data,
                         *[_parse_quoted(row[idx[f]]) if f in idx else None for f in fracs], None])
    return cols, rows, quoted


def clean_table(s: dict, sets, contaminated: dict) -> tuple[list, list] | None:
    """model, data, label share, test items (all / kept), accuracy on all, without the flagged ones, difference."""
    rows = []
    for ds in sets:
        c = contaminated.get(ds.name)
        if not c or not c["mask"].any():
            continue
        n, kept = len(c["mask"]), int((~c["mask"]).sum())
        for model, by_frac in s["probe"][ds.name].items():
            for frac, v in by_frac.items():
                if "clean" in v:
                    rows.append([model, ds.name, frac, f"{n} / {kept}", round(v["mean"], 2), round(v["clean"]["mean"], 2),
                                 round(v["clean"]["mean"] - v["mean"], 2)])
    if not rows:
        return None
    return ["model", "data", "labels (%)", "test items (all / kept)", "all", "without flagged", "difference"], rows


def retrieval_clean_table(s: dict, held: dict | None) -> tuple[list, list] | None:
    if not held or not held["mask"].any():
        return None
    n, kept = len(held["mask"]), int((~held["mask"]).sum())
    rows = [[model, k.replace("i2t_r", "I→T R@").replace("t2i_r", "T→I R@"), f"{n} / {kept}", round(v["full"], 2),
             round(v["clean"], 2), round(v["clean"] - v["full"], 2)]
            for model, by_k in s["retrieval"].items() for k, v in by_k.items() if "clean" in v]
    return (["model", "recall", "faces (all / kept)", "all", "without flagged", "difference"], rows) if rows else None


def _decay(d: float) -> str:
    return f"{d:g}"


def choices_table(s: dict, grid) -> tuple[list, list]:
    """The probe's L2 choices: per model, dataset and label share the median choice of each run (its range over
    runs), the shares of attributes choosing the grid's largest and smallest value, and whether a run's choice
    is on an edge."""
    cols = ["model", "data", "labels", "chosen L2 (median over attributes)", "attributes at largest",
            "attributes at smallest", "wd_at_edge"]
    rows = []
    for dname, by_model in s["probe"].items():
        for model, by_f in by_model.items():
            if model == "majority class":
                continue
            for f, v in by_f.items():
                lo, hi = min(v["decay"]), max(v["decay"])
                rows.append([model, dname, f"{f} %", _decay(lo) if lo == hi else f"{_decay(lo)} – {_decay(hi)}",
                             f"{v['wd_edge_top'] * 100:.0f} %", f"{v['wd_edge_bottom'] * 100:.0f} %",
                             f"yes ({v['wd_edge_runs']} of {len(v['decay'])} runs)" if v["wd_at_edge"] else "no"])
    return cols, rows


SLICE_SHORT = {"1": "", "0": "¬"}


def _short(name: str) -> str:
    """"Male=1,Young=0" -> "Male ¬Young" (a table header)."""
    return " ".join(SLICE_SHORT[p.split("=")[1]] + p.split("=")[0].replace("_", " ") for p in name.split(","))


def slices_table(sl: dict, default: str) -> tuple[list, list] | None:
    """Rows: per model the probe's mean accuracy (default set) and retrieval R@5 both ways, per slice; columns:
    the slices of every group, then each group's gap (best − worst slice, mean ± std over seeds)."""
    groups = [group_key(g) for g in sl["groups"]]
    names = [(g, n) for g, gl in zip(groups, sl["groups"]) for n in slice_names(gl)]
    cols = ["model", "measure", *[_short(n) for _, n in names], *[f"gap {g.replace('+', ' × ').replace('_', ' ')}" for g in groups]]

    def cell(v):
        if v is None:
            return None
        return f"too few ({v['n']})" if v.get("too_few") else round(v["mean"], 1)

    rows = []
    probe = sl["probe"].get(default, {})
    n_probe = next(iter(probe.values()), {})
    if n_probe:
        rows.append(["faces", "test", *[n_probe.get(g, {}).get("slices", {}).get(n, {}).get("n") for g, n in names],
                     *[None for _ in groups]])
    for model, by_g in probe.items():
        rows.append([model, f"probe ({sl['probe_fraction'][default]} %)",
                     *[cell(by_g.get(g, {}).get("slices", {}).get(n)) for g, n in names],
                     *[pm(by_g[g]["gap"]["mean"], by_g[g]["gap"]["std"], 1) if by_g.get(g, {}).get("gap") else None
                       for g in groups]])
    ret = sl["retrieval"]
    if ret:
        first = next(iter(ret.values()))
        rows.append(["faces", "held-out", *[first.get(g, {}).get("slices", {}).get(n, {}).get("n") for g, n in names],
                     *[None for _ in groups]])
    for model, by_g in ret.items():
        for k, label in (("i2t_r5", "I→T R@5"), ("t2i_r5", "T→I R@5")):
            rows.append([model, label,
                         *[None if by_g.get(g, {}).get("slices", {}).get(n) is None else
                           (cell(by_g[g]["slices"][n]) if by_g[g]["slices"][n].get("too_few")
                            else round(by_g[g]["slices"][n][k]["mean"], 1)) for g, n in names],
                         *[pm(by_g[g]["gap"][k]["mean"], by_g[g]["gap"][k]["std"], 1) if by_g.get(g, {}).get("gap") else None
                           for g in groups]])
    return (cols, rows) if len(rows) > 1 else None


def slices_figure(report, sl: dict, default: str) -> bool:
    """Probe accuracy and text→image R@5 per slice, one bar per model (mean over seeds, ± std)."""
    from facecaption.core.report import setup_plotting  # noqa: PLC0415

    recs = []
    for model, by_g in sl["probe"].get(default, {}).items():
        for g, v in by_g.items():
            for name, x in v["slices"].items():
                if not x.get("too_few"):
                    recs += [{"panel": f"probe accuracy, {default} test (%)", "slice": _short(name), "model": model,
                              "value": r} for r in x["runs"]]
    for model, by_g in sl["retrieval"].items():
        for g, v in by_g.items():
            for name, x in v["slices"].items():
                if not x.get("too_few"):
                    recs += [{"panel": "text→image R@5, held-out faces (%)", "slice": _short(name), "model": model,
                              "value": val} for val in x["t2i_r5"]["runs"]]
    if not recs:
        return False
    plt, sns = setup_plotting()
    df = pd.DataFrame(recs)
    panels = list(dict.fromkeys(df["panel"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = df[df["panel"] == panel]
        sns.barplot(data=d, x="slice", y="value", hue="model", errorbar="sd", ax=ax)
        lo = max(0.0, float(d["value"].min()) - 10)
        ax.set_ylim(lo, min(100.0, float(d["value"].max()) + 3))
        ax.set_title(panel, fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    report.figure("slices", fig)
    return True


def retrieval_table(s: dict, n_faces: int) -> tuple[list, list, list[int]]:
    cols = ["model", "data", *[f"{'I→T' if k.startswith('i2t') else 'T→I'} R@{k.rsplit('r', 1)[1]}" for k in RET_KEYS]]
    rows = [[model, "held-out", *[pm(v[k]["mean"], v[k]["std"]) for k in RET_KEYS]]
            for model, v in s["retrieval"].items()]
    quoted = []
    # reference columns: model, CelebA-Caption T→I, CelebA-Caption I→T, MM-CelebA T→I, MM-CelebA I→T ("R@5 / R@10")
    for row in ref.RETRIEVAL:
        if row[0] not in ("CLIP", "FLIP"):
            continue
        for data, (t2i, i2t) in {"CelebA-Caption": (1, 2), "MM-CelebA": (3, 4)}.items():
            i5, i10 = (float(x) for x in row[i2t].split("/"))
            t5, t10 = (float(x) for x in row[t2i].split("/"))
            quoted.append(len(rows))
            rows.append([f"{row[0]} (paper)", data, None, i5, i10, None, t5, t10])
    return cols, rows, quoted


def per_attribute_figure(report, s: dict, ds_name: str, frac: str):
    from facecaption.core.report import setup_plotting  # noqa: PLC0415

    plt, sns = setup_plotting()
    records = [{"model": m, "attribute": a, "accuracy": v}
               for m, attrs in s["per_attribute"][ds_name].items() for a, v in attrs.items()]
    df = pd.DataFrame(records)
    maj = df[df["model"] == "majority class"]
    df = df[df["model"] != "majority class"]
    order = sorted(df["attribute"].unique())
    fig, ax = plt.subplots(figsize=(7, max(4, 0.22 * len(order) * max(1, df["model"].nunique()) ** 0.5 + 1)))
    sns.barplot(data=df, y="attribute", x="accuracy", hue="model", order=order, ax=ax, orient="h")
    pos = {a: i for i, a in enumerate(order)}
    ax.scatter(maj["accuracy"], [pos[a] for a in maj["attribute"]], marker="|", s=120, color="black", zorder=5,
               label="majority class")
    lo = max(0, float(min(df["accuracy"].min(), maj["accuracy"].min())) - 5)
    ax.set_xlim(lo, 100)
    ax.set_xlabel(f"linear-probe test accuracy (%), {frac} % of training labels")
    ax.set_ylabel("")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=7, frameon=False)
    report.figure("per_attribute", fig)


CHOICES = {
    "probe_weight_decay": "validation split (per attribute: accuracy, ties by BCE, then the stronger decay)",
    "probe_standardisation": "training split images (labels unused)",
    "checkpoint": "none: the train stage's final weights (or evaluate.checkpoint); no held-out data picks a step",
    "early_stopping": "none: the probe runs its L-BFGS iterations, training its steps",
    "lfwa_validation": "identities carved from LFWA's training split (never its test split)",
}


def write_report(results: dict, sets, captions, split: splitmod.Split, cfg: dict, models, io: StageIO,
                 retrieval_reason: str = "", contaminated: dict | None = None) -> None:
    from facecaption.core.report import Report  # noqa: PLC0415

    ev = cfg["evaluate"]
    fracs = all_fractions(cfg, sets)
    s = summarise(results, sets, cfg)
    sl = summarise_slices(results, sets, cfg, retrieval_reason)
    edges = probe_edges(s, ev["weight_decays"])
    report = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    default = sets[0].name
    report.update({
        "models": [m[0] for m in models], "arch": models[0][1],
        "checkpoint": models[0][2], "baselines": [m[0] for m in models[2 if ev["random_baseline"] else 1:]],
        "datasets": {d.name: {**d.sizes(), "attributes": len(d.attributes), "note": d.note} for d in sets},
        "default_dataset": default, "label_fractions": fracs, "fraction_labels": [frac_label(f) for f in fracs],
        **({"dataset_fractions": {d.name: fractions(cfg, d.name) for d in sets}} if ev["datasets"] else {}),
        "seeds": ev["seeds"], "probe_layers": ev["probe_layers"], "weight_decays": ev["weight_decays"],
        "split_overlap": {d.name: {pair: 0 for pair in d.overlap["pairs"]} for d in sets},
        "split_checks": {d.name: {k: v for k, v in d.overlap.items() if k != "pairs"} for d in sets},
        "choices": CHOICES, "wd_at_edge": bool(edges), "wd_edges": edges,
        "weight_decay_range": [min(ev["weight_decays"]), max(ev["weight_decays"])], "slices": sl,
        "retrieval_faces": len(captions[0]), "retrieval_distinct_captions": len(set(captions[2])),
        "retrieval_subset": ev["retrieval_subset"], "caption_shards": list(split.held_out),
        "retrieval_held_out": bool(split.held_out), "retrieval_note": split.note, "split_rule": split.rule,
        **s, "acceptance": acceptance(s, default),
    })
    cols, rows, quoted = probe_table(s, sets, fracs)
    report.table("probe", cols, rows,
                 caption="Linear probe on frozen image features: mean test accuracy over the attributes (%), "
                         f"by share of training labels; mean ± std over {ev['seeds']} random label subsets.",
                 quoted_rows=quoted,
                 note="Quoted rows: CelebA and LFWA with 40 attributes; the paper's LFWA fractions are 10/50/100 %. "
                      + ref.PROBE_NOTE + " wd_at_edge: the label shares at which the L2 strength chosen on "
                      "validation was the largest or smallest value of its grid in some run.")
    cols, rows = choices_table(s, ev["weight_decays"])
    report.table("probe_choices", cols, rows,
                 caption="The probe's L2 strength, chosen on the validation split per attribute from "
                         f"{', '.join(_decay(d) for d in sorted(ev['weight_decays'], reverse=True))}: the median over "
                         "attributes (its range over runs), the share of attributes choosing the grid's largest and "
                         "smallest value, and whether the median choice was on an edge.")
    report.metric("contamination", {
        name: {"test": int(len(c["mask"])), "dropped": int(c["mask"].sum()), "near_copy": c["near_copy"],
               "identity": c["identity"], "unknown_keys": c["unknown_keys"]} for name, c in (contaminated or {}).items()})
    held = (contaminated or {}).get(splitmod.HELD_OUT_SET)
    rclean = retrieval_clean_table(s, held)
    report.metric("retrieval_clean_table", bool(rclean))
    if rclean:
        report.table("retrieval_clean", *rclean,
                     caption="Retrieval without the held-out faces the contamination audit found in the training "
                             "shards (near copies): recall@k (%) over every held-out face and over the rest.")
    clean = clean_table(s, sets, contaminated or {})
    report.metric("probe_clean_table", bool(clean))
    if clean:
        report.table("probe_clean", *clean,
                     caption="Linear probe without the contamination audit's flagged test items (near copies or the "
                             "same identity in the pre-training pool, results/audit/contaminated.parquet): mean test "
                             "accuracy over attributes (%) on every test item and on the rest, at each label share; "
                             "the probes are the same, only the test rows differ.")
    table = slices_table(sl, default)
    report.metric("slices_table", bool(table))
    if table:
        report.table("slices", *table,
                     caption=f"By slice: linear-probe mean test accuracy ({default} test faces sliced by their labels) "
                             "and retrieval R@5 (held-out faces sliced by the attribute stage's confident labels), %, "
                             f"mean over {ev['seeds']} seeds; gap: best − worst slice, mean ± std over seeds. "
                             f"Slices with fewer than {ev['slice_min']} faces are not scored.")
    report.metric("slices_figure", slices_figure(report, sl, default))
    if s["retrieval"]:
        cols, rows, quoted = retrieval_table(s, len(captions[0]))
        report.table("retrieval", cols, rows,
                     caption=f"Image→text and text→image retrieval on {len(captions[0])} held-out captioned faces, recall@k (%); "
                             f"mean ± std over {ev['seeds']} random {int(ev['retrieval_subset'] * 100)} % subsets.",
                     quoted_rows=quoted,
                     note="Quoted rows: the paper's frozen-backbone retrieval (R@5 / R@10 only) on other data; "
                          "identical captions count as one candidate here.")
    if ev["zero_shot"]:
        rows = [[m, d, round(v["accuracy"], 2), round(v["balanced_accuracy"], 2),
                 round(s["probe"][d]["majority class"][frac_label(max(fractions(cfg, d)))]["mean"], 2)]
                for d, by_m in s["zeroshot"].items() for m, v in by_m.items()]
        report.table("zeroshot", ["model", "data", "accuracy", "balanced accuracy", "majority-class accuracy"], rows,
                     caption="Zero-shot attributes: a prompt and its negation per attribute, mean over attributes "
                             "(%) on the test split. Not reported by the original paper.")
    per_attribute_figure(report, s, default, frac_label(max(fractions(cfg, default))))
    report.save()
    # raw runs as CSV
    recs = []
    for m, res in results.items():
        for dname, runs in res["probe"].items():
            ds = next(d for d in sets if d.name == dname)
            for r in runs:
                for a, acc, maj in zip(ds.attributes, r["test_accuracy"], r["majority"]):
                    recs.append({"model": m, "dataset": dname, "fraction": r["fraction"], "run": r["run"],
                                 "n_train": r["n_train"], "decay": r["decay"], "attribute": a,
                                 "accuracy": float(acc), "majority": float(maj)})
    pd.DataFrame(recs).to_csv(report.folder / "probe_runs.csv", index=False, float_format="%.6g")
    ret = [{"model": m, "run": i, **r} for m, res in results.items() if res["retrieval"]
           for i, r in enumerate([*res["retrieval"]["runs"], res["retrieval"]["full"]])]
    if ret:
        df = pd.DataFrame(ret)
        df["run"] = df["run"].astype(object)
        df.loc[df.groupby("model")["run"].transform("max") == df["run"], "run"] = "full"
        df.to_csv(report.folder / "retrieval_runs.csv", index=False, float_format="%.6g")


# -- entry point ------------------------------------------------------------------------------------------
def _run(cfg: StageConfig, io: StageIO) -> int:
    t0 = time.time()
    ev = cfg["evaluate"]
    models = models_to_run(cfg, io.one("model"))
    sets = datasets(cfg, labeled_files(io))
    split = held_out(io.one("split"), io.many("pairs"))
    captions = D.read_captions(list(split.held_out), ev["retrieval_max"], keep=set(split.keys))
    # the held-out faces' attribute labels (results/attributes/<shard>.parquet), when given, for retrieval slices
    face_values, why = read_face_labels(io.inputs.get("attributes"), list(split.held_out), captions[0], ev["slices"])
    if why:
        log.warning("evaluate: retrieval slices: %s", why)
    if not split.held_out:
        log.warning("evaluate: no retrieval: %s", split.note)
    contaminated = read_contaminated(io.inputs.get("contaminated"), sets, captions[0])
    log.info("evaluate: %d models, datasets %s, %d held-out captioned faces",
             len(models), ", ".join(f"{d.name} {d.sizes()}" for d in sets), len(captions[0]))
    results = {}
    for name, arch, ckpt in models:
        t = time.time()
        enc = E.load(name, arch, ckpt, ev["device"])
        results[name] = evaluate_model(enc, sets, captions, cfg, face_values, contaminated)
        del enc
        gc.collect()
        log.info("evaluate: %s done in %.0f s", name, time.time() - t)
    write_report(results, sets, captions, split, cfg, models, io, why, contaminated)
    log.info("evaluate: finished in %.0f s", time.time() - t0)
    return 0


def run(cfg: StageConfig, io: StageIO) -> int:
    try:
        return _run(cfg, io)
    except EvaluateInputError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
