"""Stage ``evaluate``: the paper's two face tasks with frozen encoders, plus zero-shot attributes.

* linear probe: one linear layer (BCE, L2 chosen on the validation split) on frozen image features of each
  attribute set (the pipeline's labeled set, plus CelebA / LFWA / CSV folders from ``evaluate.datasets``),
  trained with a share of the training labels (``evaluate.label_fractions``; one random subset per seed),
  scored on the test split: mean and per-attribute accuracy, mean ± std over seeds;
* retrieval: image→text and text→image R@1/5/10 on the held-out caption shards and keys the train stage
  wrote (``results/train/split.json``, :mod:`facecaption.core.split`), mean ± std over random subsets (one per
  seed) and on the whole set; with no held-out shard there is no retrieval, and the metrics say why
  (``retrieval_note``): training captions are never scored as held-out ones;
* zero-shot attributes: a prompt and its negation per attribute, scored with the text encoder.

Every model is evaluated the same way: FLIP (``results/train/flip.pt``), the same architecture with random
weights, and local open_clip weights named in ``evaluate.baselines``. The paper's own numbers are added as
quoted rows. Output: ``results/reports/evaluate/`` (metrics.json, tables/*.json, figures/*.png, and the raw
runs as CSV).
"""

from __future__ import annotations

import gc
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
        D.check_disjoint(s)
        for split, n in s.sizes().items():
            if n == 0:
                raise EvaluateInputError(f"{s.name}: the {split} split is empty")
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


# -- one model ---------------------------------------------------------------------------------------------
def evaluate_model(enc: E.Encoder, sets: list[D.LabeledSet], captions, cfg: dict) -> dict:
    ev, seed = cfg["evaluate"], cfg["seed"]
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
                             "val_accuracy": res["val_accuracy"], "test_accuracy": res["test_accuracy"],
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
        subs = []
        m = max(2, int(round(ev["retrieval_subset"] * len(keys))))
        for run in range(ev["seeds"]):
            idx = np.sort(rngmod.stream(seed, "evaluate/retrieval_subset", run).choice(len(keys), m, replace=False))
            subs.append(M.retrieval(img[idx], txt[idx], [texts[i] for i in idx], KS))
        out["retrieval"] = {"full": full, "runs": subs}
    return out


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
                    "n_train": runs[0]["n_train"], "decay": [r["decay"] for r in runs]}
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
    zs = {k: v for k, v in zs.items() if v}
    return {"probe": probe, "per_attribute": per_attr, "zeroshot": zs, "retrieval": ret}


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
    cols = ["model", "data", *[f"{frac_label(f)} % labels" for f in fracs]]
    rows = []
    for ds in sets:  # a dataset probed at other fractions leaves those cells empty
        for model, by_f in s["probe"][ds.name].items():
            rows.append([model, ds.name, *[pm(by_f[frac_label(f)]["mean"], by_f[frac_label(f)]["std"])
                                           if frac_label(f) in by_f else None for f in fracs]])
    quoted = []
    where = {"CelebA": {0.01: 1, 0.1: 2, 1.0: 3}, "LFWA": {0.1: 4, 0.5: 5, 1.0: 6}}
    for row in ref.PROBE:
        if row[0] not in ("FaRL", "CLIP", "FLIP"):
            continue
        for data, idx in where.items():
            quoted.append(len(rows))
            rows.append([f"{row[0]} (paper)", data,
                         *[_parse_quoted(row[idx[f]]) if f in idx else None for f in fracs]])
    return cols, rows, quoted


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


def write_report(results: dict, sets, captions, split: splitmod.Split, cfg: dict, models, io: StageIO) -> None:
    from facecaption.core.report import Report  # noqa: PLC0415

    ev = cfg["evaluate"]
    fracs = all_fractions(cfg, sets)
    s = summarise(results, sets, cfg)
    report = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    default = sets[0].name
    report.update({
        "models": [m[0] for m in models], "arch": models[0][1],
        "checkpoint": models[0][2], "baselines": [m[0] for m in models[2 if ev["random_baseline"] else 1:]],
        "datasets": {d.name: {**d.sizes(), "attributes": len(d.attributes), "note": d.note} for d in sets},
        "default_dataset": default, "label_fractions": fracs, "fraction_labels": [frac_label(f) for f in fracs],
        **({"dataset_fractions": {d.name: fractions(cfg, d.name) for d in sets}} if ev["datasets"] else {}),
        "seeds": ev["seeds"], "probe_layers": ev["probe_layers"], "weight_decays": ev["weight_decays"],
        "split_overlap": {d.name: D.check_disjoint(d) for d in sets},
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
                      + ref.PROBE_NOTE)
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
    if not split.held_out:
        log.warning("evaluate: no retrieval: %s", split.note)
    log.info("evaluate: %d models, datasets %s, %d held-out captioned faces",
             len(models), ", ".join(f"{d.name} {d.sizes()}" for d in sets), len(captions[0]))
    results = {}
    for name, arch, ckpt in models:
        t = time.time()
        enc = E.load(name, arch, ckpt, ev["device"])
        results[name] = evaluate_model(enc, sets, captions, cfg)
        del enc
        gc.collect()
        log.info("evaluate: %s done in %.0f s", name, time.time() - t)
    write_report(results, sets, captions, split, cfg, models, io)
    log.info("evaluate: finished in %.0f s", time.time() - t0)
    return 0


def run(cfg: StageConfig, io: StageIO) -> int:
    try:
        return _run(cfg, io)
    except EvaluateInputError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
