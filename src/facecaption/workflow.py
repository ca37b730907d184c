"""The pipeline's stages as data: what each reads, writes and which config keys it depends on.

This registry is the one place that defines stage outputs. The Snakemake rules (``rules/*.smk``) take
their ``input:``/``output:`` from it, the stage entry points take their paths from it, and ``dvc.yaml``
is generated from it (``facecaption dvc-yaml``), so the three cannot drift apart; a test checks that the
committed ``dvc.yaml`` is current and that Snakemake plans the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

R = "results"

LABELED_SPLITS = ("train", "val", "test")
SHARD_KEYS = ("source", "synthface", "urls", "folder")  # the config sections that decide the shard ids
PKG = "src/facecaption"


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]  # path templates; "{shard}" for per-shard, "{shards}" expands to all shards
    outs: tuple[str, ...]
    params: tuple[str, ...]  # top-level config sections the stage reads
    per_shard: bool = False
    dirs: tuple[str, ...] = field(default=())  # outs that are directories
    persist: tuple[str, ...] = field(default=())  # outs kept across reruns (caches)
    code: tuple[str, ...] = field(default=())  # source folders/files whose change should re-run the stage
    help: str = ""

    @property
    def config_keys(self) -> tuple[str, ...]:
        """Config sections the stage depends on: its own, plus those that decide the shard list when it
        aggregates over all shards."""
        extra = SHARD_KEYS if any("{shards}" in d for d in self.deps) else ()
        return tuple(dict.fromkeys(self.params + extra))


def _split_files(kind: str) -> tuple[str, ...]:
    return tuple(f"{R}/labeled/{s}.{kind}" for s in LABELED_SPLITS)


def _report(name: str, deps: tuple[str, ...], params: tuple[str, ...], code: str | tuple[str, ...],
            help: str) -> Stage:
    out = f"{R}/reports/{name}"
    codes = (code,) if isinstance(code, str) else code
    return Stage(f"report_{name}", deps=deps, outs=(out,), dirs=(out,), params=params,
                 code=tuple(f"{PKG}/{c}" for c in codes), help=help)


SHARD = "{shard}"
ALL = "{shards}"

STAGES: dict[str, Stage] = {s.name: s for s in [
    # -- source -------------------------------------------------------------------------------------------
    Stage("collect", deps=(), params=("seed", "source", "synthface", "urls", "folder", "optout"), per_shard=True,
          outs=(f"{R}/collect/{SHARD}.tar", f"{R}/collect/{SHARD}.parquet", f"{R}/collect/{SHARD}.truth.parquet"),
          code=(f"{PKG}/collect", f"{PKG}/synthface"), help="make or fetch source images into shards"),
    Stage("labeled", deps=(), params=("seed", "labeled", "align"),
          outs=_split_files("tar") + _split_files("parquet"),
          code=(f"{PKG}/labeled", f"{PKG}/synthface", f"{PKG}/faces/align.py"),
          help="the labeled attribute set (synthface identities or CelebA) in train/val/test splits"),
    _report("corpus", deps=(f"{R}/collect/{ALL}.parquet", f"{R}/collect/{ALL}.truth.parquet", f"{R}/collect/{ALL}.tar"),
            params=(), code="collect/report.py", help="corpus statistics, attribute frequencies, example grid"),
    # -- faces ---------------------------------------------------------------------------------------------
    Stage("faces", deps=(f"{R}/collect/{SHARD}.tar", f"{R}/collect/{SHARD}.parquet"), per_shard=True,
          params=("faces", "align", "optout"),
          outs=(f"{R}/faces/{SHARD}.tar", f"{R}/faces/{SHARD}.parquet", f"{R}/faces/{SHARD}.records.parquet"),
          code=(f"{PKG}/faces",), help="detect, filter and align faces"),
    _report("faces", deps=(f"{R}/faces/{ALL}.parquet", f"{R}/faces/{ALL}.records.parquet",
                           f"{R}/collect/{ALL}.parquet", f"{R}/collect/{ALL}.truth.parquet",
                           # the record accounting (facecaption.faces.accounting) follows records to the captions
                           f"{R}/attributes/{ALL}.parquet", f"{R}/captions/{ALL}.parquet"),
            params=("faces",), code=("faces", "accounting.py"), help="face funnel, record accounting, detection audit"),
    # -- attributes ----------------------------------------------------------------------------------------
    Stage("attributes_train", deps=_split_files("tar") + _split_files("parquet"), params=("seed", "attributes"),
          outs=(f"{R}/attributes/model.pt", f"{R}/attributes/model.json"),
          code=(f"{PKG}/attributes",), help="train the attribute classifier on the labeled set"),
    Stage("attributes", deps=(f"{R}/faces/{SHARD}.tar", f"{R}/faces/{SHARD}.parquet", f"{R}/attributes/model.pt",
                              f"{R}/attributes/model.json"),
          per_shard=True, params=("attributes",), outs=(f"{R}/attributes/{SHARD}.parquet",),
          code=(f"{PKG}/attributes",), help="predict attributes, apply the paper's label and face filters"),
    _report("attributes", deps=(f"{R}/attributes/{ALL}.parquet", f"{R}/faces/{ALL}.parquet",
                                f"{R}/collect/{ALL}.truth.parquet", f"{R}/attributes/model.json",
                                # the framing figure: crops the classifier learns from beside those it labels
                                f"{R}/labeled/train.tar", f"{R}/faces/{ALL}.tar"),
            params=("attributes",), code="attributes/report.py", help="attribute audit against ground truth"),
    # -- captions ------------------------------------------------------------------------------------------
    Stage("captions", deps=(f"{R}/faces/{SHARD}.tar", f"{R}/faces/{SHARD}.parquet", f"{R}/attributes/{SHARD}.parquet"),
          per_shard=True, params=("seed", "captions"),
          outs=(f"{R}/captions/{SHARD}.tar", f"{R}/captions/{SHARD}.parquet"),
          code=(f"{PKG}/captions",), help="grammar captions (+ optional LLM rewrite) into training shards"),
    _report("captions", deps=(f"{R}/captions/{ALL}.parquet", f"{R}/attributes/{ALL}.parquet",
                              f"{R}/faces/{ALL}.parquet", f"{R}/collect/{ALL}.truth.parquet", f"{R}/captions/{ALL}.tar"),
            params=("captions",), code="captions/report.py", help="caption faithfulness audit and examples"),
    # -- training ------------------------------------------------------------------------------------------
    Stage("train", deps=(f"{R}/captions/{ALL}.tar",), params=("seed", "train", "align"),
          outs=(f"{R}/train/flip.pt", f"{R}/train/logs", f"{R}/train/open_clip"),
          dirs=(f"{R}/train/logs", f"{R}/train/open_clip"),
          code=(f"{PKG}/train",), help="FLIP pre-training (open_clip + Lightning)"),
    _report("train", deps=(f"{R}/train/logs",), params=(), code="train/report.py", help="training curves"),
    # -- evaluation ----------------------------------------------------------------------------------------
    Stage("evaluate", deps=(f"{R}/train/flip.pt", *_split_files("tar"), *_split_files("parquet"),
                            f"{R}/captions/{ALL}.tar"),
          params=("seed", "train", "align", "evaluate"), outs=(f"{R}/reports/evaluate",), dirs=(f"{R}/reports/evaluate",),
          code=(f"{PKG}/evaluate",), help="linear probe, retrieval and zero-shot attributes with baselines"),
    # -- quality -------------------------------------------------------------------------------------------
    Stage("quality", deps=(f"{R}/captions/{SHARD}.tar", f"{R}/captions/{SHARD}.parquet", f"{R}/collect/{SHARD}.parquet",
                           f"{R}/collect/{SHARD}.truth.parquet"),
          per_shard=True, params=("quality",), outs=(f"{R}/quality/{SHARD}.parquet", f"{R}/quality/{SHARD}.ngrams.npz"),
          code=(f"{PKG}/quality",), help="per-face image quality and per-caption text metrics"),
    _report("quality", deps=(f"{R}/quality/{ALL}.parquet", f"{R}/quality/{ALL}.ngrams.npz",
                             f"{R}/captions/{ALL}.parquet", f"{R}/captions/{ALL}.tar", f"{R}/collect/{ALL}.parquet",
                             f"{R}/faces/{ALL}.records.parquet", f"{R}/attributes/{ALL}.parquet", f"{R}/train/flip.pt"),
            params=("quality", "train", "align"), code="quality",
            help="Table 1, quality histograms, relevance, dataset card"),
    Stage("report_cost", deps=("benchmarks/results", f"{R}/collect/{ALL}.tar", f"{R}/faces/{ALL}.tar",
                               f"{R}/captions/{ALL}.tar"),
          params=("cost",), outs=(f"{R}/reports/cost",), dirs=(f"{R}/reports/cost",),
          code=(f"{PKG}/cost.py",), help="CPU/GPU-hours, storage and wall time projected for the real run"),
    # -- paper ---------------------------------------------------------------------------------------------
    Stage("paper", params=("paper", "source"),
          deps=("paper/paper.typ", "paper/lib.typ", "paper/sections", f"{R}/reports/{{sections}}"),
          outs=("paper/build/paper.pdf", f"{R}/tables"), dirs=(f"{R}/tables",),
          code=(f"{PKG}/paper.py", f"{PKG}/report.py"), help="compile the paper from the reports"),
]}


def shard_ids(config: dict) -> list[str]:
    """Shard ids of the collect stage; every per-shard stage uses the same ids."""
    source = config.get("source", "synthface")
    if source == "synthface":
        n = config["synthface"]["num_shards"]
    elif source == "urls":
        from facecaption.collect.urls import count_urls  # noqa: PLC0415 (only needed for this source)

        n = math.ceil(count_urls(config["urls"]) / config["urls"]["per_shard"])
    else:
        from facecaption.collect.folder import count_images  # noqa: PLC0415

        n = math.ceil(count_images(config["folder"]) / config["folder"]["per_shard"])
    return [f"{i:05d}" for i in range(max(n, 1))]


def paths(template: str, cfg: dict | None, shard: str | None = None, shards: list[str] | None = None) -> list[str]:
    """Expand a path template: ``{shard}`` for one shard, ``{shards}`` for all shards, ``{sections}``
    for the paper sections the config asks for."""
    if "{shards}" in template:
        shards = shards if shards is not None else shard_ids(cfg)
        return [template.replace("{shards}", s) for s in shards]
    if "{sections}" in template:
        return [template.replace("{sections}", s) for s in cfg["paper"]["sections"]]
    if "{shard}" in template and shard is not None:
        return [template.replace("{shard}", shard)]
    return [template]


def stage_deps(name: str, cfg: dict, shard: str | None = None, shards: list[str] | None = None) -> list[str]:
    return [p for t in STAGES[name].deps for p in paths(t, cfg, shard, shards)]


def stage_outs(name: str, shard: str | None = None) -> list[str]:
    return [p for t in STAGES[name].outs for p in paths(t, None, shard)]


def report_dir(name: str) -> str:
    return f"{R}/reports/{name}"


def needed_stages(cfg: dict) -> list[str]:
    """The stages the paper needs under this config (in registry order): the DAG Snakemake will plan."""
    shards = shard_ids(cfg)
    producer = {}
    for name, st in STAGES.items():
        for sh in shards if st.per_shard else [None]:
            for out in stage_outs(name, sh):
                producer[out] = (name, sh)
    seen: set = set()
    stack = [("paper", None)]
    while stack:
        job = stack.pop()
        if job in seen:
            continue
        seen.add(job)
        for dep in stage_deps(job[0], cfg, job[1], shards):
            if dep in producer:
                stack.append(producer[dep])
    names = {name for name, _ in seen}
    return [name for name in STAGES if name in names]
