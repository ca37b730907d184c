"""Quality report: Table 1 with this run's measured row, quality histograms, the unique-n-gram curve,
text–image relevance, the degradation check and the dataset card.

Relevance is measured on pairs the FLIP model never trained on: the held-out keys of the train stage's
``split.json`` (:mod:`facecaption.core.split`), a sample of ``quality.relevance.pairs`` drawn with ``seed``.
Without held-out keys (too few shards, or no split file) relevance is not computed and the report says why;
the sampled pairs and their similarities are in ``relevance_pairs.csv``.

Everything is summarised shard by shard (``facecaption.core.sketch``): per-face tables are read one
shard at a time, only the needed columns, into fixed-bin histograms and running moments; n-gram hash sets
merge into exact-or-HyperLogLog sketches. Memory does not grow with the number of rows beyond the
sketches, so the same code summarises 15M faces.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from facecaption.core import reference
from facecaption.core import split as splitmod
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, setup_plotting
from facecaption.core.shards import iter_samples
from facecaption.core.sketch import Moments, NGramSketch
from facecaption.core.stage import StageIO
from facecaption.quality import IMAGE_METRICS, TEXT_KINDS

log = logging.getLogger(__name__)

EDGES = {
    "width": np.arange(0, 2049, 8.0), "height": np.arange(0, 2049, 8.0),
    "sharpness": np.concatenate([[0.0], np.geomspace(1e-1, 1e6, 141)]),
    "brightness": np.linspace(0, 255, 52), "contrast": np.linspace(0, 128, 65),
    "jpeg_quality": np.arange(0.5, 101, 1.0), "brisque": np.linspace(-20, 120, 71),
    "clip_iqa": np.linspace(0, 1, 41), "perplexity": np.concatenate([np.geomspace(1, 1e5, 101)]),
    "words": np.arange(-0.5, 301, 1.0), "wps": np.arange(-0.5, 151, 1.0), "flesch": np.linspace(-100, 150, 126),
}


def _read(path: str, columns: list[str]):
    have = set(pq.read_schema(path).names)
    return pq.read_table(path, columns=[c for c in columns if c in have]).to_pandas()


class Summaries:
    """All streaming summaries of the per-face quality tables."""

    def __init__(self, steps: int, exact_limit: int, p: int):
        self.image = {m: Moments(EDGES[m]) for m in IMAGE_METRICS}
        self.perplexity = Moments(EDGES["perplexity"])
        self.text = {k: {m: Moments(EDGES[m]) for m in ("words", "wps", "flesch")} for k in TEXT_KINDS}
        self.by_degrade: dict[str, dict[str, Moments]] = {}
        self.reasons: Counter = Counter()
        self.faces = 0
        self.included = 0
        self.texts = 0
        self.rewritten = 0
        self.steps = steps
        self.sketch = {k: {n: [NGramSketch(exact_limit, p) for _ in range(steps)] for n in (1, 2, 3, 4)}
                       for k in TEXT_KINDS}
        self.totals = {k: {n: np.zeros(steps, dtype=np.int64) for n in (1, 2, 3, 4)} for k in TEXT_KINDS}
        self.candidates: list[tuple[int, str, int]] = []  # (-hash, key, shard index): smallest hashes kept

    def add_table(self, df, shard_index: int, keep_pairs: int, eligible=None, seed: int = 0) -> None:
        """Add one shard's quality table. Relevance candidates: of the included faces whose key is in
        ``eligible`` (all when None), the ``keep_pairs`` with the smallest hashes of (``seed``, key)."""
        self.faces += len(df)
        excluded = df["excluded_reason"].notna()
        for reason in df.loc[excluded, "excluded_reason"]:
            for r in str(reason).split("; "):
                self.reasons[r.split(":")[0]] += 1
        ok = df[~excluded]
        self.included += len(ok)
        self.texts += int(ok["n_captions"].sum()) if "n_captions" in ok else len(ok)
        for m in IMAGE_METRICS:
            if m in ok:
                self.image[m].add(ok[m].to_numpy(dtype=float))
        if "perplexity" in ok:
            self.perplexity.add(ok["perplexity"].to_numpy(dtype=float))
        rw = ok["rewritten"].astype(bool) if "rewritten" in ok else None
        self.rewritten += int(rw.sum()) if rw is not None else 0
        for kind in TEXT_KINDS:
            src = "cap" if kind == "llm" else kind
            part = ok[rw] if kind == "llm" and rw is not None else (ok if kind != "llm" else ok.iloc[:0])
            if f"{src}_words" not in part:
                continue
            present = part[part[f"{src}_words"] > 0]
            self.text[kind]["words"].add(present[f"{src}_words"].to_numpy(dtype=float))
            self.text[kind]["flesch"].add(present[f"{src}_flesch"].to_numpy(dtype=float))
            wps = [np.asarray(v) for v in present[f"{src}_wps"]]
            if wps:
                self.text[kind]["wps"].add(np.concatenate(wps))
        if "degrade" in ok:
            for value, grp in ok.groupby(ok["degrade"].fillna("unknown")):
                d = self.by_degrade.setdefault(str(value), {m: Moments(EDGES[m]) for m in ("sharpness", "brisque")})
                d["sharpness"].add(grp["sharpness"].to_numpy(dtype=float))
                d["brisque"].add(grp["brisque"].to_numpy(dtype=float))
        # relevance candidates: the keep_pairs keys with the smallest seeded hashes, kept in a bounded heap
        for key in ok["key"]:
            if eligible is not None and key not in eligible:
                continue
            h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")
            item = (-h, key, shard_index)
            if len(self.candidates) < keep_pairs:
                heapq.heappush(self.candidates, item)
            elif item > self.candidates[0]:
                heapq.heapreplace(self.candidates, item)

    def add_ngrams(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as z:
            kinds = [str(k) for k in z["kinds"]]
            totals = z["totals"]
            for i, kind in enumerate(kinds):
                for j, n in enumerate(z["n"]):
                    n = int(n)
                    for s in range(min(self.steps, totals.shape[2])):
                        self.totals[kind][n][s] += totals[i, j, s]
                        self.sketch[kind][n][s].add(z[f"{kind}_{n}_{s}"])

    def curve(self, kind: str, n: int) -> tuple[list[float], list[float], bool]:
        """Unique n-grams in the first k/steps of the data, k = 1..steps (buckets merged cumulatively)."""
        acc = NGramSketch(self.sketch[kind][n][0].exact_limit, self.sketch[kind][n][0].hll.p)
        shares, counts = [], []
        for s in range(self.steps):
            acc.merge(self.sketch[kind][n][s])
            shares.append((s + 1) / self.steps)
            counts.append(acc.count())
        return shares, counts, acc.is_exact


QUALITY_COLUMNS = ["key", "excluded_reason", "degrade", "n_captions", "rewritten", "perplexity", *IMAGE_METRICS,
                   *[f"{p}_{m}" for p in ("cap", "gram", "alt") for m in ("words", "wps", "flesch")]]


def summarise(q_parquets: list[str], q_npz: list[str], q: dict, keep: int, eligible=None, seed: int = 0) -> Summaries:
    """The ``Summaries`` of the quality tables (one shard at a time, only the needed columns) and n-grams;
    relevance candidates among the ``eligible`` keys (see :meth:`Summaries.add_table`)."""
    summ = Summaries(q["share_steps"], q["exact_ngram_limit"], q["hll_precision"])
    for i, path in enumerate(q_parquets):
        summ.add_table(_read(path, QUALITY_COLUMNS), i, keep, eligible, seed)
    for path in q_npz:
        summ.add_ngrams(path)
    return summ


def _fmt_count(n: int) -> str:
    for div, suf in ((1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suf}"
    return str(n)


def _relevance_pairs(summ: Summaries, cap_tars: list[str], cap_parquets: list[str]) -> tuple[list, list, list]:
    """Images and captions of the chosen pairs, read only from the shards that hold them (``cap_tars[i]`` and
    ``cap_parquets[i]``: the shard of the i-th quality table)."""
    from facecaption.core.shards import read_parquet

    chosen = sorted((key, shard) for _, key, shard in summ.candidates)
    by_shard: dict[int, set] = {}
    for key, shard in chosen:
        by_shard.setdefault(shard, set()).add(key)
    images, texts, keys = {}, {}, []
    for shard, wanted in by_shard.items():
        caps = read_parquet(cap_parquets[shard], columns=["key", "caption"]).set_index("key")["caption"]
        for sample in iter_samples(cap_tars[shard]):
            if sample["__key__"] in wanted and "jpg" in sample:
                images[sample["__key__"]] = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
                texts[sample["__key__"]] = str(caps.get(sample["__key__"], ""))
    keys = [k for k, _ in chosen if k in images]
    return [images[k] for k in keys], [texts[k] for k in keys], keys


# -- the steps of the report ------------------------------------------------------------------------------
def held_out_keys(split_file: str, pairs: list[str]) -> tuple[set[str], str]:
    """(the keys FLIP never trained on, where they come from): the held-out keys of the train stage's split;
    none, and why, when it holds none out or cannot be read."""
    try:
        split = splitmod.read(split_file)
        splitmod.check_shards(split, pairs, split_file)
    except splitmod.SplitError as exc:
        return set(), f"not scored: {exc}"
    if not split.keys:
        return set(), f"not scored: {split.note or 'the held-out shards hold no pairs'}"
    return set(split.keys), (f"held-out pairs of the train stage: a sample of the {len(split.keys)} faces in "
                             f"{len(split.held_out)} caption shard(s) FLIP never trained on ({split_file})")


def report_counts(rep: Report, summ: Summaries, q: dict, shards: int) -> None:
    """Faces, exclusions, the image and text summaries; whether CLIP-IQA and perplexity were computed."""
    rep.update({"faces": summ.faces, "included": summ.included, "excluded": summ.faces - summ.included,
                "exclusions": dict(sorted(summ.reasons.items())), "texts": summ.texts,
                "rewritten": summ.rewritten, "shards": shards})
    for m, mom in summ.image.items():
        rep.metric(f"image_{m}", mom.summary())
    for kind, d in summ.text.items():
        for m, mom in d.items():
            rep.metric(f"text_{kind}_{m}", mom.summary())
    clip_done = summ.image["clip_iqa"].n > 0
    rep.metric("clip_iqa_computed", clip_done)
    rep.metric("clip_iqa_reason", "" if clip_done else (
        "no local CLIP weights configured (quality.clip.weights); weights are never downloaded at run time"
        if not q["clip"]["weights"] else "no face was scored"))
    ppl_done = summ.perplexity.n > 0
    rep.metric("perplexity_computed", ppl_done)
    rep.metric("perplexity", summ.perplexity.summary())
    rep.metric("perplexity_reason", "" if ppl_done else (
        "no local language model configured (quality.language_model)" if not q["language_model"] else "no caption scored"))


def report_ngrams(rep: Report, summ: Summaries, q: dict) -> dict:
    """Vocabulary, distinct-n and the unique-n-gram curve per text kind; returns the curves."""
    ngrams: dict = {}
    for kind in TEXT_KINDS:
        ngrams[kind] = {}
        for n in (1, 2, 3, 4):
            shares, counts, exact = summ.curve(kind, n)
            total = int(summ.totals[kind][n].sum())
            ngrams[kind][str(n)] = {"shares": shares, "unique": counts, "exact": exact, "total": total,
                                    "distinct": (counts[-1] / total) if total else None}
        rep.metric(f"vocabulary_{kind}", ngrams[kind]["1"]["unique"][-1])
        rep.metric(f"unique_4grams_{kind}", ngrams[kind]["4"]["unique"][-1])
        rep.metric(f"distinct_{kind}", {n: ngrams[kind][n]["distinct"] for n in ngrams[kind]})
    rep.metric("ngrams", ngrams)
    rep.metric("ngram_counting", "exact 64-bit hashes" if all(
        v["exact"] for k in ngrams.values() for v in k.values()) else f"HyperLogLog p={q['hll_precision']} past the exact limit")
    return ngrams


def check_degradation(rep: Report, summ: Summaries, q: dict) -> None:
    """synthface's blurred faces must score worse than undegraded ones (``quality.degradation_check``)."""
    deg = {k: {m: mom.summary() for m, mom in d.items()} for k, d in sorted(summ.by_degrade.items())}
    rep.metric("by_degrade", deg)
    check = {"judged": False, "passed": None, "reason": "no ground-truth degradations (real source)"}
    if "blur" in deg and "none" in deg:
        nb = deg["blur"]["sharpness"]["n"]
        if nb < q["min_check_faces"]:
            check["reason"] = f"only {nb} blurred faces (< quality.min_check_faces = {q['min_check_faces']})"
        else:
            sharp_ok = deg["blur"]["sharpness"]["median"] < deg["none"]["sharpness"]["median"]
            bris_ok = None
            if deg["blur"]["brisque"]["n"] and deg["none"]["brisque"]["n"]:
                bris_ok = deg["blur"]["brisque"]["median"] > deg["none"]["brisque"]["median"]
            passed = bool(sharp_ok and bris_ok is not False)
            check = {"judged": True, "passed": passed, "sharpness_lower": bool(sharp_ok), "brisque_higher": bris_ok,
                     "blurred_faces": nb, "reason": "blurred faces score worse" if passed else
                     "blurred faces do NOT score worse than undegraded ones"}
    elif "none" in deg:
        check["reason"] = "no blurred faces among the captioned faces"
    rep.metric("degradation_check", check)
    if check["judged"] and not check["passed"]:
        msg = f"degradation check failed: {check}"
        if q["degradation_check"] == "fail":
            raise SystemExit(msg)
        if q["degradation_check"] == "warn":
            log.warning(msg)


def relevance_encoders(cfg: StageConfig, model: str) -> dict:
    """``{name: (encoder or None, why not)}``: the trained FLIP ``model`` and the configured open_clip weights."""
    from facecaption.quality.relevance import flip_encoder

    q = cfg["quality"]
    batch = q["relevance"]["batch"]
    encoders = {"flip": flip_encoder(model, cfg["train"]["arch"], batch)}
    if q["clip"]["weights"]:
        from facecaption.quality.image import ClipScorer

        c = q["clip"]
        try:
            encoders["clip"] = (ClipScorer(c["weights"], c["arch"], c["model_config"], batch), "")
        except Exception as exc:  # noqa: BLE001
            encoders["clip"] = (None, f"loading {c['weights']} failed: {type(exc).__name__}: {exc}")
    else:
        encoders["clip"] = (None, "no local open_clip weights configured (quality.clip.weights)")
    return encoders


def report_relevance(rep: Report, cfg: StageConfig, io: StageIO, summ: Summaries, source: str,
                     held_out: bool) -> dict:
    """Relevance of the sampled held-out pairs under each encoder (``source``: where the pairs come from, or
    why there are none; ``held_out``: whether the split holds any out); the pairs and their similarities go to
    ``relevance_pairs.csv``."""
    import pandas as pd

    from facecaption.quality.relevance import relevance

    rel_cfg, seed = cfg["quality"]["relevance"], cfg["seed"]
    images, texts, keys = (_relevance_pairs(summ, io.many("pairs"), io.many("captions")) if summ.candidates
                           else ([], [], []))
    rep.update({"relevance_pair_source": source, "relevance_seed": seed, "relevance_held_out": bool(keys)})
    table = pd.DataFrame({"key": keys})
    none = source if not held_out else "no held-out pair with a readable image and a caption"
    encoders = relevance_encoders(cfg, io.one("model")) if keys else {n: (None, none) for n in ("flip", "clip")}
    rel = {}
    for name, (enc, why) in encoders.items():
        if enc is None or len(keys) < 2:
            rel[name] = {"computed": False, "reason": why or "fewer than 2 pairs"}
            continue
        r = relevance(enc, images, texts, keys, min(rel_cfg["candidates"], len(keys)), seed)
        sims = r.pop("similarities")
        table[f"{name}_similarity"] = sims
        hist = Moments(np.linspace(-1, 1, 81))
        hist.add(sims)
        rel[name] = {"computed": True, "reason": "", **r, "hist": hist.hist()}
    rep.metric("relevance", rel)
    table.to_csv(rep.folder / "relevance_pairs.csv", index=False, float_format="%.6g")
    return rel


def report_tables(rep: Report, summ: Summaries, ngrams: dict, io: StageIO) -> None:
    """Table 1 with this run's measured row, the image-quality and the caption summaries."""
    faces_meta = face_resolution(io.many("face_records"))
    n_attr = attribute_count(io.many("attributes"))
    mean_words = summ.text["cap"]["words"].mean if summ.text["cap"]["words"].n else None
    res = (f"{faces_meta['mean_width']:.0f}×{faces_meta['mean_height']:.0f}" if faces_meta["n"] else
           f"{summ.image['width'].mean:.0f}×{summ.image['height'].mean:.0f}")
    source = source_name(io.many("records"))
    measured = [f"this run ({source})", _fmt_count(summ.included), res, n_attr if n_attr else "–", "yes",
                _fmt_count(summ.texts), round(mean_words, 1) if mean_words is not None else "–"]
    rows = [list(r) for r in reference.TABLE1] + [measured]
    rep.table("table1", reference.TABLE1_COLUMNS, rows,
              caption="Face datasets compared (Table 1 of the paper) with the dataset this run produced.",
              quoted_rows=list(range(len(reference.TABLE1))),
              note=f"Quoted rows: {reference.SOURCE}. Last row measured from this run's artifacts: faces kept "
                   f"and captioned, mean face box in the source image, attribute labels, captions, words per caption.")
    rep.update({"table1_images": summ.included, "table1_resolution": res, "table1_annotations": n_attr,
                "table1_texts": summ.texts, "table1_words_per_text": mean_words,
                "face_box_mean_width": faces_meta.get("mean_width"), "face_box_mean_height": faces_meta.get("mean_height"),
                "crop_size": summ.image["width"].mean if summ.image["width"].n else None})

    rep.table("quality_summary", ["metric", "mean", "median", "std"], [
        [label, summ.image[m].mean if summ.image[m].n else None, summ.image[m].quantile(0.5) if summ.image[m].n else None,
         summ.image[m].std if summ.image[m].n > 1 else None]
        for m, label in (("sharpness", "sharpness (Laplacian var.)"), ("brightness", "brightness"),
                         ("contrast", "contrast (RMS)"), ("jpeg_quality", "JPEG quality (est.)"),
                         ("brisque", "BRISQUE"), ("clip_iqa", "CLIP-IQA"))],
              caption="Image quality of the aligned faces (excluded faces left out).")
    text_rows = []
    for kind, label in TEXT_KINDS.items():
        t = summ.text[kind]
        if not t["words"].n:
            continue
        text_rows.append([label, t["words"].n, t["words"].mean, t["wps"].mean, ngrams[kind]["1"]["unique"][-1],
                          ngrams[kind]["4"]["unique"][-1], ngrams[kind]["4"]["distinct"], t["flesch"].mean])
    rep.table("text_summary", ["texts", "count", "words/text", "words/sentence", "vocabulary", "unique 4-grams",
                               "distinct-4", "Flesch"], text_rows,
              caption="Caption statistics: training captions, grammar captions, LLM rewrites and source alt-texts.")


def run(cfg: StageConfig, io: StageIO) -> int:
    q = cfg["quality"]
    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    eligible, source = held_out_keys(io.one("split"), io.many("pairs"))
    summ = summarise(io.many("quality"), io.many("ngrams"), q, q["relevance"]["pairs"], eligible, cfg["seed"])
    report_counts(rep, summ, q, shards=len(io.many("quality")))
    ngrams = report_ngrams(rep, summ, q)
    check_degradation(rep, summ, q)
    rel = report_relevance(rep, cfg, io, summ, source, held_out=bool(eligible))
    report_tables(rep, summ, ngrams, io)
    plt, sns = setup_plotting()
    figures(rep, plt, sns, summ, ngrams, rel)
    from facecaption.quality.card import dataset_card

    (rep.folder / "DATASET_CARD.md").write_text(dataset_card(
        rep.metrics, records=io.many("records"), face_records=io.many("face_records"),
        attributes=io.many("attributes"), captions=io.many("captions")))
    rep.save()
    return 0


def face_resolution(face_records: list[str]) -> dict:
    """Mean size of the kept faces' boxes in their source images (the faces stage's records), streamed per shard."""
    w, h = Moments(EDGES["width"]), Moments(EDGES["height"])
    for path in face_records:
        try:
            df = _read(path, ["face", "status", "x0", "y0", "x1", "y1"])
        except Exception:  # noqa: BLE001
            continue
        if not {"face", "status", "x0", "x1"} <= set(df.columns):
            continue
        kept = df[(df["face"] >= 0) & (df["status"] == "kept")]
        w.add((kept["x1"] - kept["x0"]).to_numpy(dtype=float))
        h.add((kept["y1"] - kept["y0"]).to_numpy(dtype=float))
    return {"n": w.n, "mean_width": w.mean if w.n else None, "mean_height": h.mean if h.n else None}


def attribute_count(attributes: list[str]) -> int:
    for path in attributes:
        try:
            return sum(1 for c in pq.read_schema(path).names if c.startswith("p_"))
        except Exception:  # noqa: BLE001
            continue
    return 0


def source_name(records: list[str]) -> str:
    """The source named in the collect records."""
    for path in records:
        try:
            s = _read(path, ["source"])
            if "source" in s and len(s):
                return str(s["source"].iloc[0])
        except Exception:  # noqa: BLE001
            continue
    return "unknown source"


def figures(rep: Report, plt, sns, summ: Summaries, ngrams: dict, rel: dict) -> None:
    import pandas as pd

    def hist_frame(mom: Moments, label: str, density: bool = True) -> pd.DataFrame:
        h = mom.hist()
        e = np.asarray(h["edges"])
        c = np.asarray(h["counts"], dtype=float)
        if density and c.sum():
            c = c / c.sum()
        return pd.DataFrame({"x": (e[:-1] + e[1:]) / 2, "share": c, "which": label})

    # BRISQUE (and CLIP-IQA) histograms
    panels = [("brisque", "BRISQUE (lower = better)")] + ([("clip_iqa", "CLIP-IQA (higher = better)")]
                                                         if summ.image["clip_iqa"].n else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.5), squeeze=False)
    for ax, (m, label) in zip(axes[0], panels):
        df = hist_frame(summ.image[m], label, density=False)
        sns.histplot(df, x="x", weights="share", bins=len(df), ax=ax, color="#4c72b0", element="step")
        ax.set_xlabel(label)
        ax.set_ylabel("faces")
    rep.figure("image_quality_hist", fig)

    # words per sentence: captions vs grammar captions vs alt-texts (vs LLM rewrites)
    frames = [hist_frame(summ.text[k]["wps"], TEXT_KINDS[k]) for k in TEXT_KINDS if summ.text[k]["wps"].n]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    if frames:
        df = pd.concat(frames)
        df = df[df.x <= max(10, df[df.share > 0].x.max() + 2)]
        sns.lineplot(df, x="x", y="share", hue="which", drawstyle="steps-mid", ax=ax)
    ax.set_xlabel("words per sentence")
    ax.set_ylabel("share of sentences")
    rep.figure("words_per_sentence", fig)

    # unique n-grams vs share of data
    rows = []
    for kind, per_n in ngrams.items():
        for n, c in per_n.items():
            if c["total"]:
                rows += [{"share": s * 100, "unique": u, "texts": TEXT_KINDS[kind], "n": f"{n}-grams"}
                         for s, u in zip(c["shares"], c["unique"])]
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.6))
    if rows:
        df = pd.DataFrame(rows)
        sns.lineplot(df[df.n == "4-grams"], x="share", y="unique", hue="texts", marker="o", ax=axes[0])
        sns.lineplot(df[df.texts == TEXT_KINDS["cap"]], x="share", y="unique", hue="n", marker="o", ax=axes[1])
    axes[0].set_title("unique 4-grams", fontsize=8)
    axes[1].set_title("training captions, n = 1–4", fontsize=8)
    for ax in axes:
        ax.set_xlabel("share of data (%)")
        ax.set_ylabel("unique n-grams")
    rep.figure("unique_ngrams", fig)

    # sharpness by degradation
    fig, ax = plt.subplots(figsize=(5, 2.6))
    frames = [hist_frame(d["sharpness"], k) for k, d in summ.by_degrade.items() if d["sharpness"].n]
    if frames:
        df = pd.concat(frames)
        df = df[df.x > 0]
        sns.lineplot(df, x="x", y="share", hue="which", drawstyle="steps-mid", ax=ax)
        ax.set_xscale("log")
    ax.set_xlabel("sharpness (variance of the Laplacian)")
    ax.set_ylabel("share of faces")
    rep.figure("sharpness_by_degradation", fig)

    # relevance histograms
    fig, ax = plt.subplots(figsize=(5, 2.4))
    for name, r in rel.items():
        if r.get("computed"):
            e = np.asarray(r["hist"]["edges"])
            sns.lineplot(x=(e[:-1] + e[1:]) / 2, y=r["hist"]["counts"], ax=ax, label=name, drawstyle="steps-mid")
    ax.set_xlabel("image–caption cosine similarity")
    ax.set_ylabel("pairs")
    rep.figure("relevance", fig)
