"""The pipeline's stages as data: what each reads and writes (by name), which config it depends on, and its
entry point.

This registry is the one place that defines stage inputs and outputs. The Snakemake rules (``rules/*.smk``)
take their named ``input:``/``output:`` from it, the CLI builds each stage's :class:`~facecaption.core.stage.StageIO`
and config view from it, and ``dvc.yaml`` is generated from it (``facecaption dvc-yaml``), so the three cannot
drift apart; a test checks that the committed ``dvc.yaml`` is current and that Snakemake plans the same outputs.
Only the CLI, the ``dvc.yaml`` generator, ``preflight`` and the rules import it; it imports only the core, and
never plans shards itself: callers pass the shard ids (``facecaption.collect.plan``).

Rerun keys: a stage's params are the config sections it declares (``params``) minus :data:`RUNTIME`, the keys
that change how fast a stage runs but not what it writes (threads, worker counts, inference batch sizes,
devices of inference, work folders). Files named in config (opt-out lists, a grammar, dataset files, start
weights) are inputs (:func:`config_files`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facecaption.core.arms import ARMS, separate_arms
from facecaption.core.config import StageConfig, split_keys
from facecaption.core.stage import StageIO

R = "results"
METRICS = f"{R}/metrics"  # DVC metrics and plots: small, git-tracked (cache: false)

LABELED_SPLITS = ("train", "val", "test")
SHARD_KEYS = ("source", "synthface", "urls", "folder", "release")  # the config sections that decide the shard ids

# Keys that never change a stage's outputs: not in any rerun key (Snakemake params, dvc.yaml params).
RUNTIME = (
    "urls.threads", "urls.processes", "urls.distributor", "urls.chunk", "urls.work_dir", "urls.keep_work",
    "urls.spark_master", "urls.spark_conf",
    "faces.batch_size", "faces.insightface.device", "faces.insightface.cuda_fallback", "faces.insightface.model_dir",
    "attributes.device", "attributes.in_memory_max", "attributes.predict_batch_size",
    "captions.llm.batch_size", "captions.llm.concurrency", "captions.llm.cache_dir",
    "train.num_workers", "train.threads", "train.resume_dir",
    "evaluate.batch", "evaluate.device", "audit.batch",
    "quality.clip.batch", "quality.relevance.batch",
)

SHARD = "{shard}"
ALL = "{shards}"


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function", called as function(cfg: StageConfig, io: StageIO) -> int
    deps: dict[str, str]  # input name -> path template: "{shard}" for this job's shard, "{shards}" for all
    outs: dict[str, str]  # output name -> path
    params: tuple[str, ...]  # top-level config sections the stage reads
    per_shard: bool = False
    dirs: tuple[str, ...] = field(default=())  # output names that are directories
    metrics: tuple[str, ...] = field(default=())  # output names that are DVC metrics (JSON, git-tracked)
    plots: tuple[str, ...] = field(default=())  # output names that are DVC plots (CSV, git-tracked)
    config_files: Callable[[dict], dict[str, list[str]]] | None = None  # files named in config: inputs
    override: dict = field(default_factory=dict)  # config merged over the run's (an ablation arm's train.text)
    help: str = ""

    @property
    def config_keys(self) -> tuple[str, ...]:
        """Config sections the stage reads: its own, plus those that decide the shard list when it
        aggregates over all shards."""
        extra = SHARD_KEYS if any(ALL in d for d in self.deps.values()) else ()
        return tuple(dict.fromkeys(self.params + extra))

    @property
    def module(self) -> str:
        return self.entry.split(":")[0]


# -- files named in config ---------------------------------------------------------------------------------
def _files(*pairs: tuple[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        values = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
        if values:
            out[name] = [str(v) for v in values]
    return out


def _optout_files(cfg: dict) -> dict[str, list[str]]:
    return _files(("optout_lists", (cfg.get("optout") or {}).get("lists") or []))


def _collect_files(cfg: dict) -> dict[str, list[str]]:
    """Opt-out lists, the folder source's CSV, and the URL lists (or released parquets) given as files (a folder or
    glob of lists is resolved when the shards are planned; its files are not inputs: a changed list there needs
    --forcerun)."""
    folder, urls = cfg.get("folder") or {}, cfg.get("urls") or {}
    lists = {"urls": urls.get("input"), "release": (cfg.get("release") or {}).get("input")}.get(cfg.get("source"))
    lists = [lists] if isinstance(lists, str) else list(lists or [])
    lists = [s for s in lists if not any(ch in str(s) for ch in "*?[") and not str(s).endswith("/")
             and "." in Path(str(s)).name]
    return {**_optout_files(cfg), **_files(("folder_csv", folder.get("csv") if cfg.get("source") == "folder" else None)),
            **_files(("url_lists", [str(Path(str(s)).expanduser()) for s in lists]))}


def _captions_files(cfg: dict) -> dict[str, list[str]]:
    return _files(("grammar", (cfg.get("captions") or {}).get("grammar")))


def _train_files(cfg: dict) -> dict[str, list[str]]:
    """Start weights, and the audit's flagged pool crops when training leaves them out."""
    tr = cfg.get("train") or {}
    excluded = f"{R}/audit/pool.parquet" if tr.get("exclude_contaminated", "none") != "none" else None
    return _files(("init", tr.get("init")), ("contaminated_pool", excluded))


def _attributes_train_files(cfg: dict) -> dict[str, list[str]]:
    return _files(("weights", (cfg.get("attributes") or {}).get("weights")))


def _evaluate_files(cfg: dict) -> dict[str, list[str]]:
    """The dataset lists (attribute, partition and landmark files; the image folders are data, not lists) and
    the baselines' and the configured checkpoint's weights."""
    ev = cfg.get("evaluate") or {}
    lists = [f"{d['path'].rstrip('/')}/{d[k]}" for d in ev.get("datasets") or []
             for k in ("attributes", "partition", "landmarks") if d.get(k)]
    return _files(("dataset_lists", lists), ("baselines", [b["path"] for b in ev.get("baselines") or []]),
                  ("checkpoint", ev.get("checkpoint")))


def _audit_files(cfg: dict) -> dict[str, list[str]]:
    """The evaluation sets' lists (as evaluation reads them), the FLIP checkpoint of the identity embedder's
    offline fallback (audit.checkpoint, else this run's) and the train stage's split, unless training waits for
    the audit (train.exclude_contaminated)."""
    au, tr = cfg.get("audit") or {}, cfg.get("train") or {}
    after_training = tr.get("exclude_contaminated", "none") == "none"
    model = au.get("checkpoint") or (f"{R}/train/flip.pt" if after_training else None)
    # the train stage's split: its held-out faces (retrieval's test faces) are audited against the training shards
    split = f"{R}/train/split.json" if after_training else None
    return {**{k: v for k, v in _evaluate_files(cfg).items() if k == "dataset_lists"},
            **_files(("model", model), ("split", split))}


def _labeled_files(cfg: dict) -> dict[str, list[str]]:
    lab = cfg.get("labeled") or {}
    if lab.get("source") != "celeba" or not lab.get("celeba_dir"):
        return {}
    root = str(lab["celeba_dir"]).rstrip("/")
    names = ["list_attr_celeba.txt", "list_eval_partition.txt"]
    if lab.get("celeba_landmarks"):
        names.append(lab["celeba_landmarks"])
    return _files(("celeba_lists", [f"{root}/{n}" for n in names]))


# -- the caption ablation -------------------------------------------------------------------------------------
ABL = f"{R}/ablation"
ARM_LIST = "{arms}"  # in a path template: one path per ablation arm trained apart from the main FLIP


def _arm_stages(arm: str) -> list[Stage]:
    """``train_<arm>`` and ``evaluate_<arm>``: the train and evaluate stages with ``train.text`` set to the arm,
    into ``results/ablation/<arm>/``; evaluation without the baselines (the main evaluation has them)."""
    d = f"{ABL}/{arm}"
    text = {"train": {"text": arm}}
    return [
        Stage(f"train_{arm}", "facecaption.train:run", deps={"pairs": f"{R}/captions/{ALL}.tar"},
              params=("seed", "train", "align"),
              outs={"model": f"{d}/flip.pt", "logs": f"{d}/logs", "open_clip": f"{d}/open_clip", "split": f"{d}/split.json"},
              dirs=("logs", "open_clip"), config_files=_train_files, override=text,
              help=f"ablation: FLIP trained on train.text = {arm}"),
        Stage(f"evaluate_{arm}", "facecaption.evaluate:run",
              deps={"model": f"{d}/flip.pt", "split": f"{d}/split.json", **_split("images"), **_split("labels"),
                    "pairs": f"{R}/captions/{ALL}.tar", "attributes": f"{R}/attributes/{ALL}.parquet"},
              params=("seed", "train", "align", "evaluate"),
              outs={"report": f"{d}/evaluate", "metrics": f"{d}/evaluate.json"}, dirs=("report",),
              config_files=_evaluate_files,
              override={**text, "evaluate": {"random_baseline": False, "baselines": [], "checkpoint": None}},
              help=f"ablation: the train.text = {arm} FLIP, evaluated as the main one (no baselines)"),
    ]


# -- the stages ------------------------------------------------------------------------------------------------
def _split(kind: str) -> dict[str, str]:
    return {f"{s}_{kind}": f"{R}/labeled/{s}.{'tar' if kind == 'images' else 'parquet'}" for s in LABELED_SPLITS}


def _report(name: str, entry: str, deps: dict[str, str], params: tuple[str, ...], help: str,
            metrics: bool = True, plots: dict[str, str] | None = None) -> Stage:
    outs = {"report": f"{R}/reports/{name}", **({"metrics": f"{METRICS}/{name}.json"} if metrics else {}), **(plots or {})}
    return Stage(f"report_{name}", entry=entry, deps=deps, outs=outs, dirs=("report",), params=params,
                 metrics=("metrics",) if metrics else (), plots=tuple(plots or ()), help=help)


STAGES: dict[str, Stage] = {s.name: s for s in [
    # -- source -------------------------------------------------------------------------------------------
    Stage("collect", "facecaption.collect:run", deps={}, per_shard=True,
          params=("seed", "source", "synthface", "urls", "folder", "release", "optout"),
          outs={"images": f"{R}/collect/{SHARD}.tar", "records": f"{R}/collect/{SHARD}.parquet",
                "truth": f"{R}/collect/{SHARD}.truth.parquet"},
          config_files=_collect_files, help="make or fetch source images into shards"),
    Stage("labeled", "facecaption.labeled:run", deps={}, params=("seed", "labeled", "align"),
          outs={**_split("images"), **_split("labels")}, config_files=_labeled_files,
          help="the labeled attribute set (synthface identities or CelebA) in train/val/test splits"),
    _report("corpus", "facecaption.collect.report:run",
            deps={"records": f"{R}/collect/{ALL}.parquet", "truth": f"{R}/collect/{ALL}.truth.parquet",
                  "images": f"{R}/collect/{ALL}.tar"},
            params=(), help="corpus statistics, attribute frequencies, example grid"),
    # -- faces ---------------------------------------------------------------------------------------------
    Stage("faces", "facecaption.faces:run", per_shard=True, params=("faces", "align", "optout", "release"),
          deps={"images": f"{R}/collect/{SHARD}.tar", "records": f"{R}/collect/{SHARD}.parquet"},
          outs={"crops": f"{R}/faces/{SHARD}.tar", "faces": f"{R}/faces/{SHARD}.parquet",
                "records": f"{R}/faces/{SHARD}.records.parquet"},
          config_files=_optout_files, help="detect, filter and align faces"),
    _report("faces", "facecaption.faces.report:run",
            deps={"faces": f"{R}/faces/{ALL}.parquet", "face_records": f"{R}/faces/{ALL}.records.parquet",
                  "records": f"{R}/collect/{ALL}.parquet", "truth": f"{R}/collect/{ALL}.truth.parquet",
                  # the record accounting (facecaption.faces.accounting) follows records to the captions
                  "attributes": f"{R}/attributes/{ALL}.parquet", "captions": f"{R}/captions/{ALL}.parquet",
                  "crops": f"{R}/faces/{ALL}.tar"},  # the grid of aligned examples
            params=("faces", "align"), help="face funnel, record accounting, detection audit, release manifest"),
    # -- attributes ----------------------------------------------------------------------------------------
    Stage("attributes_train", "facecaption.attributes:run_train", deps={**_split("images"), **_split("labels")},
          params=("seed", "attributes"), outs={"model": f"{R}/attributes/model.pt", "card": f"{R}/attributes/model.json"},
          config_files=_attributes_train_files, help="train the attribute classifier on the labeled set"),
    Stage("attributes", "facecaption.attributes:run", per_shard=True, params=("attributes",),
          deps={"crops": f"{R}/faces/{SHARD}.tar", "faces": f"{R}/faces/{SHARD}.parquet",
                "model": f"{R}/attributes/model.pt", "card": f"{R}/attributes/model.json"},
          outs={"attributes": f"{R}/attributes/{SHARD}.parquet"},
          help="predict attributes, apply the paper's label and face filters"),
    _report("attributes", "facecaption.attributes.report:run",
            deps={"attributes": f"{R}/attributes/{ALL}.parquet", "faces": f"{R}/faces/{ALL}.parquet",
                  "truth": f"{R}/collect/{ALL}.truth.parquet", "card": f"{R}/attributes/model.json",
                  # the framing figure: crops the classifier learns from beside those it labels
                  "labeled_images": f"{R}/labeled/train.tar", "crops": f"{R}/faces/{ALL}.tar"},
            params=("attributes",), help="attribute audit against ground truth"),
    # -- captions ------------------------------------------------------------------------------------------
    Stage("captions", "facecaption.captions:run", per_shard=True, params=("seed", "captions"),
          deps={"crops": f"{R}/faces/{SHARD}.tar", "faces": f"{R}/faces/{SHARD}.parquet",
                "attributes": f"{R}/attributes/{SHARD}.parquet"},
          outs={"pairs": f"{R}/captions/{SHARD}.tar", "captions": f"{R}/captions/{SHARD}.parquet"},
          config_files=_captions_files, help="grammar captions (+ optional LLM rewrite) into training shards"),
    _report("captions", "facecaption.captions.report:run",
            deps={"captions": f"{R}/captions/{ALL}.parquet", "attributes": f"{R}/attributes/{ALL}.parquet",
                  "faces": f"{R}/faces/{ALL}.parquet", "truth": f"{R}/collect/{ALL}.truth.parquet",
                  "pairs": f"{R}/captions/{ALL}.tar"},
            params=("captions",), help="caption faithfulness audit and examples"),
    # -- training ------------------------------------------------------------------------------------------
    Stage("train", "facecaption.train:run", deps={"pairs": f"{R}/captions/{ALL}.tar"}, params=("seed", "train", "align"),
          outs={"model": f"{R}/train/flip.pt", "logs": f"{R}/train/logs", "open_clip": f"{R}/train/open_clip",
                "split": f"{R}/train/split.json"},
          dirs=("logs", "open_clip"), config_files=_train_files, help="FLIP pre-training (open_clip + Lightning)"),
    _report("train", "facecaption.train.report:run", deps={"logs": f"{R}/train/logs"}, params=(),
            help="training curves", plots={"curve": f"{METRICS}/train_curve.csv"}),
    # -- evaluation ----------------------------------------------------------------------------------------
    Stage("evaluate", "facecaption.evaluate:run",
          deps={"model": f"{R}/train/flip.pt", "split": f"{R}/train/split.json", **_split("images"),
                **_split("labels"), "pairs": f"{R}/captions/{ALL}.tar",
                "attributes": f"{R}/attributes/{ALL}.parquet",  # the held-out faces' labels: retrieval by slice
                "contaminated": f"{R}/audit/contaminated.parquet"},  # probe results also without flagged test items
          params=("seed", "train", "align", "evaluate"),
          outs={"report": f"{R}/reports/evaluate", "metrics": f"{METRICS}/evaluate.json"}, dirs=("report",),
          metrics=("metrics",), config_files=_evaluate_files,
          help="linear probe, retrieval and zero-shot attributes with baselines"),
    # -- contamination audit --------------------------------------------------------------------------------
    Stage("audit", "facecaption.audit:run",
          deps={"pairs": f"{R}/captions/{ALL}.tar", "truth": f"{R}/collect/{ALL}.truth.parquet",
                "test_images": f"{R}/labeled/test.tar", "test_labels": f"{R}/labeled/test.parquet",
                # the labeled training split's identities set the identity threshold (audit.cosine: auto)
                "train_images": f"{R}/labeled/train.tar", "train_labels": f"{R}/labeled/train.parquet"},
          params=("seed", "audit", "evaluate", "labeled", "align", "faces"),
          outs={"report": f"{R}/reports/audit", "metrics": f"{METRICS}/audit.json",
                "contaminated": f"{R}/audit/contaminated.parquet", "pool": f"{R}/audit/pool.parquet"},
          dirs=("report",), metrics=("metrics",), config_files=_audit_files,
          help="contamination audit: near copies (pHash) and identities (face embeddings) of every test split in the pool"),
    # -- quality -------------------------------------------------------------------------------------------
    Stage("quality", "facecaption.quality:run", per_shard=True, params=("quality",),
          deps={"pairs": f"{R}/captions/{SHARD}.tar", "captions": f"{R}/captions/{SHARD}.parquet",
                "records": f"{R}/collect/{SHARD}.parquet", "truth": f"{R}/collect/{SHARD}.truth.parquet"},
          outs={"quality": f"{R}/quality/{SHARD}.parquet", "ngrams": f"{R}/quality/{SHARD}.ngrams.npz"},
          help="per-face image quality and per-caption text metrics"),
    _report("quality", "facecaption.quality.report:run",
            deps={"quality": f"{R}/quality/{ALL}.parquet", "ngrams": f"{R}/quality/{ALL}.ngrams.npz",
                  "captions": f"{R}/captions/{ALL}.parquet", "pairs": f"{R}/captions/{ALL}.tar",
                  "records": f"{R}/collect/{ALL}.parquet", "face_records": f"{R}/faces/{ALL}.records.parquet",
                  "attributes": f"{R}/attributes/{ALL}.parquet", "model": f"{R}/train/flip.pt",
                  "split": f"{R}/train/split.json"},
            params=("seed", "quality", "train", "align"), help="Table 1, quality histograms, relevance, dataset card"),
    _report("cost", "facecaption.cost:run",
            deps={"benchmarks": "benchmarks/results", "images": f"{R}/collect/{ALL}.tar",
                  "crops": f"{R}/faces/{ALL}.tar", "pairs": f"{R}/captions/{ALL}.tar"},
            params=("cost",), metrics=False,
            help="CPU/GPU-hours, storage and wall time projected for the real run"),
    # -- the caption ablation: one FLIP per text field, the same recipe and evaluation ----------------------
    *[st for arm in ARMS for st in _arm_stages(arm)],
    _report("ablation", "facecaption.ablation:run",
            deps={"main_metrics": f"{METRICS}/evaluate.json", "main_logs": f"{R}/train/logs",
                  "arm_metrics": f"{ABL}/{ARM_LIST}/evaluate.json", "arm_logs": f"{ABL}/{ARM_LIST}/logs"},
            params=("ablation", "train", "captions", "source"),
            help="the caption ablation: FLIP trained on each text field, evaluated the same way"),
    # -- paper ---------------------------------------------------------------------------------------------
    Stage("paper", "facecaption.paper:run", params=("paper", "source"),
          deps={"typst": "paper/paper.typ", "lib": "paper/lib.typ", "sections": "paper/sections",
                "reports": f"{R}/reports/{{sections}}"},
          outs={"pdf": "paper/build/paper.pdf", "tables": f"{R}/tables"}, dirs=("tables",),
          help="compile the paper from the reports"),
]}


# -- paths -------------------------------------------------------------------------------------------------------
def expand(template: str, cfg: dict | None, shards: list[str], shard: str | None = None) -> str | list[str]:
    """A path template as a path (``{shard}`` filled in) or a list of paths (``{shards}``: one per shard;
    ``{sections}``: one per paper section the config asks for)."""
    if ALL in template:
        return [template.replace(ALL, s) for s in shards]
    if "{sections}" in template:
        return [template.replace("{sections}", s) for s in cfg["paper"]["sections"]]
    if ARM_LIST in template:
        return [template.replace(ARM_LIST, a) for a in separate_arms(cfg)]
    if SHARD in template and shard is not None:
        return template.replace(SHARD, shard)
    return template


def stage_inputs(name: str, cfg: dict, shards: list[str], shard: str | None = None) -> dict[str, str | list[str]]:
    """Named inputs: the registry's, then the files named in config."""
    st = STAGES[name]
    cfg = with_override(name, cfg)
    out = {k: expand(t, cfg, shards, shard) for k, t in st.deps.items()}
    if st.config_files is not None:
        out.update(st.config_files(cfg))
    return out


def stage_outputs(name: str, shard: str | None = None) -> dict[str, str]:
    return {k: expand(t, None, [], shard) for k, t in STAGES[name].outs.items()}


def flat(named: dict[str, str | list[str]]) -> list[str]:
    return [p for v in named.values() for p in (v if isinstance(v, list) else [v])]


def stage_io(name: str, cfg: dict, shards: list[str], shard: str | None = None) -> StageIO:
    st = STAGES[name]
    if st.per_shard and shard is None:
        raise ValueError(f"{name}: --shard is required (a per-shard stage)")
    return StageIO(name, stage_inputs(name, cfg, shards, shard), stage_outputs(name, shard), shard, list(shards))


# -- config ------------------------------------------------------------------------------------------------------
def with_override(name: str, cfg: dict) -> dict:
    """The run's config with the stage's ``override`` merged over it (an ablation arm's ``train.text``)."""
    over = STAGES[name].override
    if not over:
        return cfg
    out = dict(cfg)
    for section, values in over.items():
        out[section] = {**(cfg.get(section) or {}), **values} if isinstance(values, dict) else values
    return out


def stage_config(name: str, cfg: dict) -> StageConfig:
    """The stage's view of the config: the declared sections; reading another one raises."""
    return StageConfig(name, with_override(name, cfg), STAGES[name].config_keys)


def rerun_config(name: str, cfg: dict) -> tuple[dict, dict]:
    """(result keys, runtime keys) of the sections the stage declares: the first is its rerun key."""
    return split_keys(with_override(name, cfg), STAGES[name].config_keys, RUNTIME)


# -- the DAG ----------------------------------------------------------------------------------------------------
def needed_stages(cfg: dict, shards: list[str]) -> list[str]:
    """The stages the paper needs under this config (in registry order): the DAG Snakemake will plan."""
    producer = {}
    for name, st in STAGES.items():
        for sh in shards if st.per_shard else [None]:
            for out in stage_outputs(name, sh).values():
                producer[out] = (name, sh)
    seen: set = set()
    stack = [("paper", None)]
    while stack:
        job = stack.pop()
        if job in seen:
            continue
        seen.add(job)
        for dep in flat(stage_inputs(job[0], cfg, shards, job[1])):
            if dep in producer:
                stack.append(producer[dep])
    names = {name for name, _ in seen}
    return [name for name in STAGES if name in names]
