# Shared helpers: config validation, shard planning, each rule's named inputs and outputs and its rerun key, from
# the stage registry (facecaption.workflow).
import json
import os
import sys

from snakemake_interface_executor_plugins.settings import ExecMode

from facecaption import workflow as W
from facecaption.collect import plan as fc_plan
from facecaption.core import config as fc_config

try:
    fc_config.validate(config)
except fc_config.ConfigError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)


def plan_shards():
    """The shard ids, planned by the source once per run: the Snakemake you started plans (a folder source walks
    its tree, a URL source counts its lists) and leaves the plan in .snakemake/facecaption/; a cluster job, which
    reads this Snakefile again on its node, takes the plan from there instead of walking again."""
    key = fc_config.canonical_json({k: config.get(k) for k in W.SHARD_KEYS})
    path = os.path.join(".snakemake", "facecaption", "plan.json")
    if workflow.exec_mode == ExecMode.REMOTE and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["shards"]
    shards = fc_plan.shard_ids(config)
    if workflow.exec_mode == ExecMode.DEFAULT:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": key, "shards": shards}, f)
        os.replace(tmp, path)
    return shards


try:
    SHARDS = plan_shards()
except fc_config.ConfigError as exc:  # e.g. a missing URL list or image folder
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)
CONDA_ENV = "../envs/facecaption.yaml"  # relative to rules/; used with --sdm conda


wildcard_constraints:
    shard=r"\d{5}",


def rerun_key(stage):
    """The config keys that change a stage's outputs, as JSON: a param, so that a change re-runs exactly the
    stages whose results it changes (threads, worker counts, batch sizes of inference: see runtime_key)."""
    text = fc_config.canonical_json(W.rerun_config(stage, config)[0])
    return lambda wildcards: text  # a function: braces in config values are not wildcards


def runtime_key(stage):
    """The stage's runtime keys (facecaption.workflow.RUNTIME) as JSON: passed to the command as a resource,
    which is not a rerun trigger, so changing urls.threads or faces.batch_size re-runs nothing."""
    return fc_config.canonical_json(W.rerun_config(stage, config)[1])


def shards_arg(stage):
    """--num-shards N for a stage that reads every shard (the plan above, so its job does not plan again)."""
    return f"--num-shards {len(SHARDS)}" if any(W.ALL in d for d in W.STAGES[stage].deps.values()) else ""


def inputs(stage):
    """Named inputs of a stage from the registry (and the files its config names); per-shard stages get them
    for their {shard} wildcard. For `input: unpack(inputs(stage))`."""
    if W.STAGES[stage].per_shard:
        return lambda wc: W.stage_inputs(stage, config, SHARDS, wc.shard)
    named = W.stage_inputs(stage, config, SHARDS)
    return lambda wc: named


def outputs(stage):
    """Named outputs of a stage from the registry, directories marked as such. For `output: **outputs(stage)`."""
    st = W.STAGES[stage]
    return {k: directory(p) if k in st.dirs else p for k, p in W.stage_outputs(stage).items()}


def res(stage, key, default):
    """A resource of a rule from config (resources.<rule>.<key>), else the rule's default."""
    return config.get("resources", {}).get(stage, {}).get(key, default)


def threads_of(stage, default=1):
    """resources.<rule>.threads; for a GPU job given cpus_per_gpu and no threads, its CPUs (per task)."""
    threads = res(stage, "threads", None)
    if threads is None and res(stage, "gpus", 0) and res(stage, "cpus_per_gpu", None):
        per_node, nodes = layout(stage)
        threads = res(stage, "cpus_per_gpu", None) * (1 if per_node * nodes > 1 else res(stage, "gpus", 0))
    return default if threads is None else threads


def mem_of(stage, default=2000):
    return res(stage, "mem_mb", default)


# -- resources for a cluster ------------------------------------------------------------------------------
# resources.<rule>.* become the Snakemake resources that snakemake-executor-plugin-slurm (2.8) turns into
# sbatch options: mem_mb -> --mem, runtime -> --time, gpu (+ gpu_model) -> --gpus=[<model>:]<n>,
# gres -> --gres, cpus_per_gpu -> --cpus-per-gpu (for GPU jobs; else threads -> --cpus-per-task),
# nodes -> --nodes, and for jobs marked `mpi` tasks_per_node -> --ntasks-per-node / tasks -> --ntasks.
# Inside the job the plugin's jobstep runs a job with `srun -n1` (one task), except an `mpi` job: that one
# runs the rule's command as it is, in the batch script, and the command starts its tasks itself
# (layout() / launcher() below, for train). Locally (--cores) these resources only label the jobs.


def layout(stage):
    """(tasks per node, nodes) of a stage's job: Lightning's layout for train (one task per device:
    train.devices per node, or the GPUs per node for `auto`; train.num_nodes nodes), one task elsewhere."""
    if stage != "train":
        return 1, 1
    nodes, devices = config["train"]["num_nodes"], config["train"]["devices"]
    gpus = res(stage, "gpus", 0)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and devices.strip() != "auto":  # a list of device ids, "0,1,2"
        return len([d for d in devices.split(",") if d.strip()]), nodes
    if devices in ("auto", -1):  # every GPU of the node: those the job asks for
        return (gpus // nodes if gpus else 1), nodes
    return devices, nodes


def check_resources():
    """resources.* that the schema cannot judge alone: rule names and train's layout. (gpu_model and
    cpus_per_gpu are ignored where gpus is 0: an overlay that turns a GPU job into a CPU job cannot
    remove the keys it inherits.)"""
    for stage in config.get("resources", {}):
        if stage not in W.STAGES:
            raise fc_config.ConfigError(f"config error: resources.{stage}: no such rule; rules: {', '.join(W.STAGES)}")
    gpus = res("train", "gpus", 0)
    per_node, nodes = layout("train")
    if gpus and gpus % nodes:
        raise fc_config.ConfigError(f"config error: resources.train.gpus: {gpus} GPUs do not split evenly over "
                                    f"train.num_nodes: {nodes}; give every node the same number")
    if gpus and per_node != gpus // nodes:
        raise fc_config.ConfigError(f"config error: train.devices: {config['train']['devices']} ({per_node} per node), but "
                                    f"resources.train.gpus: {gpus} over train.num_nodes: {nodes} is {gpus // nodes} per node; "
                                    f"set train.devices: {gpus // nodes} (or auto)")


try:
    check_resources()
except fc_config.ConfigError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)


# Before any job runs, one line naming the key: GPUs asked for where CUDA is missing, when the jobs run on this
# machine (submitted jobs check at their start: the login node has no GPU); then every file, folder and
# endpoint the stages will need (CelebA, LFWA, model packs, start weights, the LLM server), once, in the
# Snakemake you started (not again in each cluster job). Fallbacks print one warning line.
from facecaption import preflight as fc_preflight

try:
    for _line in fc_preflight.check_devices(config, local=fc_preflight.jobs_run_here(workflow)):
        sys.stderr.write(f"{_line}\n")
    if workflow.exec_mode == ExecMode.DEFAULT:
        fc_preflight.check_inputs(config)
except fc_config.ConfigError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)


def in_slurm_job():
    """Whether this Snakemake is the SLURM jobstep's, running a job inside its allocation (the process that
    runs the rule's command there): a cluster job re-runs Snakemake in exec mode REMOTE; a local run
    (--cores), even inside an salloc/sbatch allocation, is the process you started (DEFAULT)."""
    return workflow.exec_mode == ExecMode.REMOTE and "SLURM_JOB_ID" in os.environ


def launcher(stage):
    """The prefix that starts a multi-task job's command once per task inside its SLURM allocation:
    `srun` with the job's layout (one task per GPU), so that every task is a process srun started, as
    Lightning's SLURM environment needs (SLURM_NTASKS = devices x nodes, SLURM_PROCID = the rank). Empty for
    a one-task job and everywhere but in the SLURM job, so a local run starts the command as it always did
    (Lightning then starts the processes of DDP itself). A resource (not a param): not a rerun trigger."""
    per_node, nodes = layout(stage)
    gpus, cpus_per_gpu = res(stage, "gpus", 0), res(stage, "cpus_per_gpu", None)

    def prefix(wildcards, threads):
        if per_node * nodes == 1 or not in_slurm_job():
            return ""
        cpus = cpus_per_gpu if gpus and cpus_per_gpu else threads
        # the jobstep passes on only the job's id (no SLURM_NTASKS & co), so the layout is spelt out; the
        # step gets the job's GPUs and memory by default; one failing task ends the others
        return f"srun --nodes={nodes} --ntasks-per-node={per_node} --cpus-per-task={cpus} --kill-on-bad-exit=1 "

    return prefix


def resources_of(stage, mem_mb):
    """The Snakemake resources of a stage's job, for `resources: **resources_of(stage, mem_mb)`: mem_mb
    (resources.<rule>.mem_mb, else ``mem_mb``) and, only when configured, runtime and the GPUs (gpu_model,
    cpus_per_gpu); for a job of several tasks (train on several devices or nodes) the task layout, marked
    `mpi` for the plugin. A config without resources.* gives {mem_mb}, as before."""
    out = {"mem_mb": mem_of(stage, mem_mb)}
    if res(stage, "runtime", None):
        out["runtime"] = res(stage, "runtime", None)  # minutes
    gpus, model = res(stage, "gpus", 0), res(stage, "gpu_model", None)
    per_node, nodes = layout(stage)
    if per_node * nodes > 1:
        # sbatch --nodes=N --ntasks-per-node=T (--ntasks=N where T is 1: the plugin wants T > 1), GPUs per node
        out.update(mpi="srun", nodes=nodes)
        if per_node > 1:
            out["tasks_per_node"] = per_node
        else:
            out["tasks"] = nodes
        if gpus:
            out["gres"] = f"gpu:{model}:{per_node}" if model else f"gpu:{per_node}"
            if per_node == 1:
                out["tasks_per_gpu"] = 1  # else the plugin takes `tasks` as tasks per GPU
    elif gpus:
        out["gpu"] = gpus  # sbatch --gpus=[<model>:]<n>; the jobstep's srun -n1 passes it on
        if model:
            out["gpu_model"] = model
    if gpus and res(stage, "cpus_per_gpu", None):
        out["cpus_per_gpu"] = res(stage, "cpus_per_gpu", None)
    return out


if config["source"] == "urls":
    # compute nodes often have no internet: downloads run where snakemake runs (the login node)
    localrules:
        collect,
