# Shared helpers: config validation, shard ids, stage paths from the registry (facecaption.workflow).
import sys

from facecaption import config as fc_config
from facecaption import workflow as W

try:
    fc_config.validate(config)
except fc_config.ConfigError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)

try:
    SHARDS = W.shard_ids(config)
except fc_config.ConfigError as exc:  # e.g. a missing URL list or image folder
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)
CONDA_ENV = "../envs/facecaption.yaml"  # relative to rules/; used with --sdm conda

wildcard_constraints:
    shard=r"\d{5}",


def cfg(stage):
    """The config sections a stage reads, as JSON (a change re-runs exactly the stages that read it)."""
    text = fc_config.section_json(config, *W.STAGES[stage].config_keys)
    return lambda wildcards: text  # a function: braces in config values are not wildcards


def deps(stage):
    """Inputs of a stage from the registry; per-shard stages get them for their {shard} wildcard."""
    if W.STAGES[stage].per_shard:
        return lambda wc: W.stage_deps(stage, config, wc.shard, SHARDS)
    return W.stage_deps(stage, config, shards=SHARDS)


def outs(stage):
    """Outputs of a stage from the registry, directories marked as such."""
    st = W.STAGES[stage]
    return [directory(p) if p in st.dirs else p for p in W.stage_outs(stage)]


def res(stage, key, default):
    """A resource of a rule from config (resources.<rule>.<key>), else the rule's default."""
    return config.get("resources", {}).get(stage, {}).get(key, default)


def threads_of(stage, default=1):
    return res(stage, "threads", default)


def mem_of(stage, default=2000):
    return res(stage, "mem_mb", default)


if config["source"] == "urls":
    # compute nodes often have no internet: downloads run where snakemake runs (the login node)
    localrules:
        collect,
