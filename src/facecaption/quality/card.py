"""DATASET_CARD.md: a datasheet for the dataset this run produced, generated from its artifacts.

Sources, the funnel from attempted images to captioned faces, the filters' drop reasons, attribute balance
(gender and age of the kept faces), the share of the captioned faces in each slice the evaluation reports
results by (Male × Young, Pale_Skin), caption statistics, known biases and licence notes. Every count is read
from the shards (streamed shard by shard); nothing is typed by hand except the licence guidance.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from facecaption.core import reference

BALANCE_ATTRS = ("Male", "Young", "Eyeglasses", "Smiling", "Pale_Skin")
# the evaluation's default slices (schema: evaluate.slices); the quality report does not read that section
SLICES = (("Male", "Young"), ("Pale_Skin",))


def _read(path, columns):
    try:
        have = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in columns if c in have]).to_pandas()
    except Exception:  # noqa: BLE001 - a missing artifact leaves its section of the card empty
        return None


def funnel(records: list[str], face_records: list[str], attributes: list[str], captions: list[str]) -> dict:
    """Counts from attempted images to captioned faces, per-shard tables streamed one at a time: the collect
    ``records``, the faces stage's ``face_records``, the ``attributes`` and ``captions`` tables."""
    out = Counter()
    sources, status, drop = Counter(), Counter(), Counter()
    for p in records:
        df = _read(p, ["source", "status"])
        if df is not None:
            out["images_attempted"] += len(df)
            sources.update(df["source"].astype(str)) if "source" in df else None
            status.update(df["status"].astype(str)) if "status" in df else None
    for p in face_records:
        df = _read(p, ["image_key", "face", "status", "reason"])
        if df is not None and {"face", "status"} <= set(df.columns):
            faces = df[df["face"] >= 0]
            out["images_with_face"] += faces["image_key"].nunique() if "image_key" in df else 0
            out["faces_detected"] += len(faces)
            out["faces_aligned"] += int((faces["status"] == "kept").sum())
            if "reason" in df:
                drop.update(df.loc[df["status"] == "dropped", "reason"].fillna("").astype(str))
    for p in attributes:
        df = _read(p, ["kept", "reason"])
        if df is not None and "kept" in df:
            out["faces_labelled"] += len(df)
            out["faces_kept_attributes"] += int(df["kept"].astype(bool).sum())
            if "reason" in df:
                drop.update("attributes: " + df.loc[~df["kept"].astype(bool), "reason"].fillna("").astype(str))
    for p in captions:
        df = _read(p, ["key"])
        if df is not None:
            out["faces_captioned"] += len(df)
    out["images_ok"] = status.get("success", 0)
    return {"counts": dict(out), "sources": dict(sources), "status": dict(status), "drop_reasons": dict(drop)}


def balance(attributes: list[str]) -> dict:
    """Share of kept faces with each attribute = 1 among those labelled confidently (1/0), from the
    ``attributes`` tables."""
    res: dict = {}
    for p in attributes:
        df = _read(p, ["kept", *BALANCE_ATTRS])
        if df is None:
            continue
        if "kept" in df:
            df = df[df["kept"].astype(bool)]
        for a in BALANCE_ATTRS:
            if a in df:
                r = res.setdefault(a, Counter())
                r.update({"yes": int((df[a] == 1).sum()), "no": int((df[a] == 0).sum()),
                          "unsure": int((df[a] == -1).sum())})
    return {a: {**c, "share_yes": (c["yes"] / (c["yes"] + c["no"])) if c["yes"] + c["no"] else None}
            for a, c in res.items()}


def slice_shares(attributes: list[str], captions: list[str], groups=SLICES) -> dict:
    """Per group of attributes (``"Male+Young"``) and slice (``"Male=1,Young=0"``): how many captioned faces
    (rows of the ``captions`` tables) the attribute stage labels confidently into it and their ``share`` among
    all captioned faces; ``unsure``: faces with a -1 (or no label) for one of the group's attributes. Tables are
    paired by shard and streamed one shard at a time."""
    attrs = {Path(p).name.split(".")[0]: p for p in attributes}
    wanted = sorted({a for g in groups for a in g})
    counts = {"+".join(g): Counter() for g in groups}
    total = 0
    for cap in captions:
        keys = _read(cap, ["key"])
        if keys is None or "key" not in keys:
            continue
        total += len(keys)
        path = attrs.get(Path(cap).name.split(".")[0])
        lab = _read(path, ["key", *wanted]) if path else None
        if lab is None or "key" not in lab:
            for g in groups:
                counts["+".join(g)]["unsure"] += len(keys)
            continue
        df = keys.merge(lab.drop_duplicates("key"), on="key", how="left")
        for g in groups:
            c = counts["+".join(g)]
            if not all(a in df for a in g):
                c["unsure"] += len(df)
                continue
            vals = df[list(g)].fillna(-1).astype(int).to_numpy()
            known = (vals >= 0).all(1)
            c["unsure"] += int((~known).sum())
            for combo in itertools.product((1, 0), repeat=len(g)):
                name = ",".join(f"{a}={v}" for a, v in zip(g, combo))
                c[name] += int((vals == combo).all(1).sum())
    out = {}
    for g in groups:
        gk = "+".join(g)
        c = counts[gk]
        names = [",".join(f"{a}={v}" for a, v in zip(g, combo)) for combo in itertools.product((1, 0), repeat=len(g))]
        out[gk] = {**{n: {"n": c[n], "share": round(c[n] / total, 6) if total else None} for n in names},
                   "unsure": {"n": c["unsure"], "share": round(c["unsure"] / total, 6) if total else None}}
    return {"faces": total, "groups": out}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def dataset_card(m: dict, *, records: list[str], face_records: list[str], attributes: list[str],
                 captions: list[str]) -> str:
    """The card's Markdown from the report's metrics ``m`` and the per-shard tables. The slice shares
    (:func:`slice_shares`) are also recorded in ``m["card_slices"]`` (the report's metrics, saved after)."""
    f = funnel(records, face_records, attributes, captions)
    b = balance(attributes)
    shares = slice_shares(attributes, captions)
    m["card_slices"] = shares
    c = f["counts"]
    src = ", ".join(f"{k} ({v})" for k, v in f["sources"].items()) or "unknown"
    synth = "synthface" in f["sources"]
    L = ["# Dataset card", "",
         "A datasheet for the face image–caption dataset produced by this run of the facecaption pipeline "
         "(generated by `facecaption report_quality` from the run's artifacts; do not edit by hand).", "",
         "## Sources", "",
         f"- Images by source: {src}; download status: "
         + (", ".join(f"{k}: {v}" for k, v in sorted(f["status"].items())) or "–") + ".",
         "- Captions: grammar captions built from predicted facial attributes"
         + (f", {m.get('rewritten', 0)} of them rewritten by a language model" if m.get("rewritten") else "")
         + "; the source alt-texts are kept beside them for comparison.", "",
         "## Funnel", "", "| stage | count |", "|---|---:|"]
    for label, key in (("images attempted", "images_attempted"), ("images downloaded / rendered", "images_ok"),
                       ("images with a detected face", "images_with_face"), ("faces detected", "faces_detected"),
                       ("faces kept after detection filters and aligned", "faces_aligned"),
                       ("faces with enough confident attribute labels", "faces_kept_attributes"),
                       ("faces captioned (the dataset)", "faces_captioned")):
        L.append(f"| {label} | {c.get(key, 0):,} |")
    L.append(f"| faces in the quality statistics (excluded: {m.get('excluded', 0)}) | {m.get('included', 0):,} |")
    L += ["", "The paper's funnel for comparison (quoted): "
          + "; ".join(f"{s} ≈ {n:,}" for s, n, _ in reference.FUNNEL) + ".", "",
          "## Filters and why faces were dropped", ""]
    if f["drop_reasons"]:
        L += ["| reason | count |", "|---|---:|"]
        L += [f"| {r or '(none given)'} | {n:,} |" for r, n in sorted(f["drop_reasons"].items(), key=lambda x: -x[1])]
    else:
        L.append("No drop records were found.")
    if m.get("exclusions"):
        L += ["", "Excluded from the quality statistics: "
              + ", ".join(f"{k}: {v}" for k, v in m["exclusions"].items()) + "."]
    L += ["", "## Attribute balance of the kept faces", "",
          "| attribute | share = 1 | yes | no | not confident |", "|---|---:|---:|---:|---:|"]
    for a, r in b.items():
        L.append(f"| {a} | {_pct(r['share_yes'])} | {r['yes']:,} | {r['no']:,} | {r['unsure']:,} |")
    if not b:
        L.append("| (no attribute tables) | | | | |")
    L += ["", "## Slices of the captioned faces", "",
          "The evaluation reports results by these slices (`evaluate.slices`); the share of the "
          f"{shares['faces']:,} captioned faces in each, by the attribute classifier's confident labels:", "",
          "| slice | faces | share |", "|---|---:|---:|"]
    for gk, by_slice in shares["groups"].items():
        for name, r in by_slice.items():
            label = f"{gk.replace('+', ' × ')}: not confidently labelled" if name == "unsure" else name.replace(",", ", ")
            L.append(f"| {label} | {r['n']:,} | {_pct(r['share'])} |")
    L += ["", "## Caption statistics", ""]
    for kind, label in (("cap", "training captions"), ("gram", "grammar captions"), ("llm", "LLM rewrites"),
                        ("alt", "source alt-texts")):
        w = m.get(f"text_{kind}_words", {})
        if w.get("n"):
            L.append(f"- {label}: {w['n']:,} texts, {w['mean']:.1f} words on average, "
                     f"{m.get(f'text_{kind}_wps', {}).get('mean') or 0:.1f} words per sentence, vocabulary "
                     f"{int(m.get(f'vocabulary_{kind}') or 0):,}, unique 4-grams {int(m.get(f'unique_4grams_{kind}') or 0):,}.")
    bq = m.get("image_brisque", {})
    L += ["", "## Image quality", "",
          f"- Aligned crops of {m.get('crop_size') or 0:.0f} px; BRISQUE median {bq.get('median') or float('nan'):.1f}; "
          f"CLIP-IQA {'computed' if m.get('clip_iqa_computed') else 'not computed: ' + m.get('clip_iqa_reason', '')}.",
          "", "## Known biases and limitations", ""]
    male, young = b.get("Male", {}).get("share_yes"), b.get("Young", {}).get("share_yes")
    L.append(f"- Gender balance (predicted `Male`): {_pct(male)} male among confidently labelled kept faces; "
             f"age (predicted `Young`): {_pct(young)} young. These are predictions of the attribute classifier, "
             "not self-reported identities, and inherit its errors and the binary categories of CelebA.")
    L.append("- The detector's score and size thresholds drop small, blurred, occluded and profile faces, so the "
             "dataset over-represents frontal, well-lit, large faces.")
    L.append("- Captions describe only the attributes the classifier predicts with confidence; attributes it "
             "cannot see (and any identity) are never described.")
    if synth:
        L.append("- This run used synthface, a procedurally rendered corpus: its faces, identities and degradations "
                 "are synthetic, and its statistics demonstrate the pipeline rather than describe real people.")
    L += ["", "## Licence notes", ""]
    if synth:
        L.append("- synthface images are generated by the pipeline itself and carry no third-party rights; the "
                 "captions are generated too.")
    L.append("- For crawled sources (LAION-Face-style URL lists), the images remain under their owners' copyright "
             "and the dataset should be distributed as URLs plus annotations; honour opt-out requests "
             "(the pipeline's `optout` list) and the terms of the source lists. The original FaceCaption-15M is "
             "distributed for research use under its own licence terms; check them before reuse.")
    L.append("- Face images are biometric personal data in many jurisdictions (e.g. GDPR Art. 9); do not use "
             "the dataset for identification or surveillance.")
    return "\n".join(L) + "\n"
