"""The SLURM profile on a real single-node SLURM: every job goes through sbatch, artifacts equal a local run;
GPU, time and task settings of resources.<rule>.* reach the jobs (the node offers two stand-in GPUs).

Starts munge, slurmctld and slurmd on this machine (root; Debian packages from .ci/setup-system.sh). When
SLURM cannot start, the test fails and says why — it never passes silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from support.repo import BIN, ROOT, TEST_CONFIG, assert_same_artifacts, copy_repo, env, snakemake
from support.slurm import Slurm

SLURM_ARGS = ["--profile", "profiles/slurm", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Slurm(tmp_path_factory.mktemp("slurm"), gpus=2)
    cluster.start()  # raises SlurmUnavailable with the reason
    yield cluster
    cluster.stop()


def finished_copy(pipeline, dst):
    """A copy of the finished tiny pipeline with its results (mtimes kept, no .snakemake records): only what
    a test forces runs again."""
    repo = copy_repo(dst, src=pipeline)
    shutil.copytree(pipeline / "results", repo / "results")
    return repo


def overlay(repo, data: dict, name="gpus.yaml") -> list[str]:
    (repo / name).write_text(yaml.safe_dump(data))
    return [*TEST_CONFIG, name]


def scontrol(jobid: str) -> dict:
    """`scontrol show job -o`: one line of Key=Value fields (the value up to the next space)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, check=True).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def submitted_jobs(log: str) -> dict[str, dict]:
    """The jobs Snakemake submitted, by their SLURM comment (rule_<rule>[_wildcards_...]) -> scontrol fields."""
    jobs = {}
    for jobid in re.findall(r"submitted with SLURM jobid (\d+)", log, flags=re.I):
        info = scontrol(jobid)
        jobs[info.get("Comment", jobid)] = {**info, "id": jobid}
    return jobs


@pytest.mark.slow
def test_profile_runs_every_job_through_sbatch(slurm, pipeline, tmp_path):
    repo = copy_repo(tmp_path / "repo", src=pipeline)
    proc = snakemake([*SLURM_ARGS, *TEST_CONFIG, "--jobs", "4"], repo, timeout=1500)
    log = proc.stdout + proc.stderr
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log, flags=re.I)
    planned = snakemake(["-n", "--forceall", *TEST_CONFIG], repo).stdout
    total = int(re.search(r"^total\s+(\d+)", planned, flags=re.M).group(1))
    # every job but the target rule `all` (a local rule) was submitted with sbatch
    assert len(submitted) == total - 1, log[-3000:]
    assert (repo / "paper/build/paper.pdf").exists()
    assert_same_artifacts(repo, pipeline)


@pytest.mark.slow
def test_train_job_gets_its_gpus_time_and_one_srun_task_per_gpu(slurm, pipeline, tmp_path):
    """train on 2 GPUs: sbatch --ntasks-per-node=2 --gres=gpu:2 --cpus-per-gpu=1 -t 30, and inside the job
    srun starts 2 tasks that train together (Lightning DDP over gloo: the node's GPUs are stand-ins, so
    train.accelerator: cpu). report_train on 1 GPU: a one-task GPU job (--gpus=1)."""
    repo = finished_copy(pipeline, tmp_path / "repo")
    config = overlay(repo, {"resources": {"train": {"gpus": 2, "runtime": 30, "cpus_per_gpu": 1},
                                          "report_train": {"gpus": 1, "runtime": 10, "cpus_per_gpu": 1}},
                            "train": {"accelerator": "cpu", "devices": 2}})
    proc = snakemake(["report_train", *SLURM_ARGS, *config, "--jobs", "2", "--forcerun", "train", "--printshellcmds",
                      "--slurm-keep-successful-logs"], repo, timeout=900)
    jobs = submitted_jobs(proc.stdout + proc.stderr)
    assert sorted(jobs) == ["rule_report_train", "rule_train"], (proc.stdout + proc.stderr)[-3000:]

    train = jobs["rule_train"]
    assert train["JobState"] == "COMPLETED"
    assert train["TimeLimit"] == "00:30:00"
    assert (train["NumNodes"], train["NumTasks"], train["NtasksPerN:B:S:C"].split(":")[0]) == ("1", "2", "2")
    assert train["TresPerNode"] == "gres:gpu:2"  # --gres=gpu:2 (per node)
    assert train["CpusPerTres"] == "gres:gpu:1"  # --cpus-per-gpu=1
    # inside the job: srun started `facecaption train` once per task ...
    jobstep = (repo / "logs/slurm/rule_train" / f"{train['id']}.log").read_text()
    assert "srun --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --kill-on-bad-exit=1 facecaption train" in jobstep, jobstep[-3000:]
    # ... and the two tasks trained as one DDP run of world size 2 in Lightning's SLURM environment (it warns
    # when srun is installed but did not start the process)
    summary = json.loads((repo / "results/train/logs/summary.json").read_text())
    assert (summary["world_size"], summary["global_batch"]) == (2, 2 * summary["batch_size"])
    train_log = (repo / "logs/train.log").read_text()
    assert "but is not used" not in train_log, train_log[-3000:]

    report = jobs["rule_report_train"]
    assert report["JobState"] == "COMPLETED"
    assert (report["TimeLimit"], report["NumTasks"]) == ("00:10:00", "1")
    assert report["TresPerJob"] == "gres:gpu:1" and report["CpusPerTres"] == "gres:gpu:1"  # --gpus=1 --cpus-per-gpu=1
    assert (repo / "results/reports/train").is_dir()


@pytest.mark.slow
def test_two_nodes_of_gpus_ask_for_one_task_per_gpu_on_each(slurm, pipeline, tmp_path):
    """train on 2 nodes x 2 GPUs: the job asks for --nodes=2 --ntasks-per-node=2 --gres=gpu:2 (per node). This
    SLURM has one node, so the job waits (PartitionConfig); the test reads it from scontrol and cancels it."""
    repo = finished_copy(pipeline, tmp_path / "repo")
    config = overlay(repo, {"resources": {"train": {"gpus": 4, "runtime": 45, "cpus_per_gpu": 1}},
                            "train": {"accelerator": "cpu", "devices": 2, "num_nodes": 2}})
    out = open(tmp_path / "snakemake.log", "w")
    proc = subprocess.Popen([str(BIN / "snakemake"), "train", *SLURM_ARGS, *config, "--jobs", "1", "--retries", "0",
                             "--forcerun", "train"], cwd=repo, env=env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        jobid, deadline = None, time.time() + 300
        while jobid is None and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
            jobid = next((ln.split()[0] for ln in queue.splitlines() if ln.endswith(" rule_train")), None)
        assert jobid, (tmp_path / "snakemake.log").read_text()[-3000:]
        time.sleep(2)  # the scheduler has looked at it
        info = scontrol(jobid)
        subprocess.run(["scancel", jobid], check=True)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()
    assert info["JobState"] == "PENDING", info
    assert info["NumNodes"].split("-")[0] == "2" and info["NumTasks"] == "4", info
    assert info["NtasksPerN:B:S:C"].split(":")[0] == "2", info
    assert info["TresPerNode"] == "gres:gpu:2" and info["CpusPerTres"] == "gres:gpu:1", info
    assert info["TimeLimit"] == "00:45:00", info
    assert proc.returncode != 0  # the cancelled job failed the run


# ------------------------------------------------------------------------------- without SLURM (seconds)


def _dry_run(tmp_path, data: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "resources.yaml"
    path.write_text(yaml.safe_dump(data))
    return snakemake(["-n", *extra, "--configfile", str(ROOT / "tests/config.test.yaml"), str(path)], ROOT,
                     timeout=600, check=False)


@pytest.mark.parametrize("data, line", [
    ({"resources": {"train": {"gpus": 3}}, "train": {"num_nodes": 2}},
     "config error: resources.train.gpus: 3 GPUs do not split evenly over train.num_nodes: 2"),
    ({"resources": {"train": {"gpus": 16}}, "train": {"num_nodes": 2, "devices": 4}},
     "config error: train.devices: 4 (4 per node), but resources.train.gpus: 16 over train.num_nodes: 2 is 8 per node"),
    ({"resources": {"trian": {"gpus": 1}}}, "config error: resources.trian: no such rule"),
    ({"resources": {"faces": {"gpus": 1, "gpu_model": "a 100"}}}, "config error: resources.faces.gpu_model: \"a 100\""),
])
def test_resources_that_do_not_add_up_stop_before_any_job(tmp_path, data, line):
    proc = _dry_run(tmp_path, data, *SLURM_ARGS)
    out = proc.stdout + proc.stderr
    errors = [ln for ln in out.splitlines() if "config error" in ln]
    assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(line), out[-3000:]
    assert "Job stats" not in out


def test_local_run_starts_train_without_srun_even_inside_an_allocation(tmp_path, monkeypatch):
    """The srun prefix is only for the SLURM jobstep: a local run (here a dry run that prints the commands,
    as if inside an salloc allocation) of a 2-task train job starts `facecaption train` as before. (No GPUs
    asked for: on this machine without CUDA, a local run asking for them stops first, tests/test_preflight.py.)"""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    proc = _dry_run(tmp_path, {"resources": {"train": {"runtime": 30}}, "train": {"accelerator": "cpu", "devices": 2}},
                    "--printshellcmds", "--forceall", "train")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    commands = [ln.strip().removeprefix("Shell command:").strip() for ln in out.splitlines() if "facecaption train --cfg" in ln]
    assert commands and all(c.startswith("facecaption train --cfg") for c in commands), commands
