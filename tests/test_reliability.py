"""Reliability across the chain: a SIGKILL mid-stage costs nothing, and unsafe patterns stay out of the code.

Each fault test starts the tiny pipeline, kills the whole Snakemake process group (SIGKILL) while a job of
the named rule is running, reruns `snakemake --cores 2 --rerun-incomplete`, and checks that the artifacts
equal those of an uninterrupted run and that no output finished before the kill was rewritten.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.repo import BIN, ROOT, TEST_CONFIG, assert_same_artifacts, copy_repo, env, snakemake

from facecaption.core.shards import read_parquet

SRC = ROOT / "src" / "facecaption"


def _running(repo: Path, rule: str) -> bool:
    logs = repo / "logs"
    return (logs / rule).is_dir() and any((logs / rule).iterdir()) or (logs / f"{rule}.log").exists()


def kill_during(repo: Path, rule: str, config=TEST_CONFIG, ready=None, timeout: float = 900) -> dict[str, float]:
    """Run the pipeline until a job of ``rule`` runs (and ``ready()`` holds), SIGKILL everything, return
    the mtimes of the outputs present at the kill (read them with :func:`incomplete_outputs` before any
    rerun to know which jobs were interrupted)."""
    proc = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", *config], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not (_running(repo, rule) and (ready is None or ready())):
            assert proc.poll() is None, f"pipeline ended before rule {rule} started"
            assert time.time() < deadline, f"rule {rule} never started"
            time.sleep(0.1 if ready else 0.2)
        time.sleep(0.2 if ready else 1.0)  # well inside the job
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {str(p.relative_to(repo)): p.stat().st_mtime for p in (repo / "results").rglob("*") if p.is_file()}


def incomplete_outputs(repo: Path) -> list[str]:
    """The outputs Snakemake itself marked as incomplete: it marks every output of a job when the job starts
    (``.snakemake/incomplete/<urlsafe base64 of the path>``, split into ``@``-prefixed folders when long) and
    unmarks them when the job has finished; after a SIGKILL the marks of the interrupted jobs remain. This is
    what ``--rerun-incomplete`` redoes, whichever of those outputs already exist."""
    from base64 import urlsafe_b64decode

    root = repo / ".snakemake" / "incomplete"
    out = []
    for path in root.rglob("*") if root.exists() else []:
        if path.is_file() and path.name != "migration_underway":
            encoded = "".join(part.removeprefix("@") for part in path.relative_to(root).parts)
            out.append(urlsafe_b64decode(encoded).decode())
    return sorted(out)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["collect", "faces", "train"])
def test_sigkill_then_rerun_equals_uninterrupted(rule, pipeline, tmp_path):
    repo = copy_repo(tmp_path / "repo", src=pipeline)
    before = kill_during(repo, rule)
    unfinished = incomplete_outputs(repo)
    snakemake(["--unlock", *TEST_CONFIG], repo)  # a SIGKILL leaves Snakemake's lock behind (README)
    snakemake(["--cores", "2", "--rerun-incomplete", *TEST_CONFIG], repo)
    assert_same_artifacts(repo, pipeline)
    assert_only_interrupted_jobs_redone(repo, before, unfinished)


LLM_KEY = "sk-" + secrets.token_hex(12)  # made at run time: no file holds it unless the pipeline leaked it


@pytest.mark.slow
def test_sigkill_during_llm_rewrite(pipeline, tmp_path, monkeypatch):
    """Kill while the captions jobs wait on a (slow, loopback) LLM endpoint; the rerun resends only what the
    cache lacks, the artifacts equal an uninterrupted run with the same endpoint, and the key is nowhere."""
    from support.llm import FakeLLM

    server = FakeLLM()
    server.delay = 0.25  # a slow model: each captions job spends seconds waiting on answers
    monkeypatch.setenv("FC_TEST_LLM_KEY", LLM_KEY)
    overlay = {"captions": {"llm": {"enabled": True, "base_url": server.url, "api_key_env": "FC_TEST_LLM_KEY",
                                    "batch_size": 4, "concurrency": 2, "timeout_s": 30, "retries": 0}}}
    config = [*TEST_CONFIG, "llm.yaml"]
    try:
        # reference: the finished tiny pipeline, captions and everything after them redone with the LLM
        ref = copy_repo(tmp_path / "ref", src=pipeline)
        shutil.copytree(pipeline / "results", ref / "results")
        (ref / "llm.yaml").write_text(yaml.safe_dump(overlay))
        snakemake(["--cores", "2", "--forcerun", "captions", *config], ref)
        shards = [read_parquet(p) for p in sorted((ref / "results/captions").glob("*.parquet"))]
        captions = pd.concat(shards)
        assert captions["rewritten"].all() and (captions["caption"] == "REWRITTEN: " + captions["grammar_caption"]).all()
        needed = sum(df["grammar_caption"].nunique() for df in shards)  # what the jobs send with empty caches
        assert len(server.requests) <= needed and all(r["auth"] == f"Bearer {LLM_KEY}" for r in server.requests)

        # the same from scratch, killed once the first batches are cached (a job flushes its cache after each
        # batch of 4 and only then sends the next, so 12 requests from 2 jobs mean at least one flush)
        server.requests.clear()
        repo = copy_repo(tmp_path / "repo", src=pipeline)
        (repo / "llm.yaml").write_text(yaml.safe_dump(overlay))
        before = kill_during(repo, "captions", config, ready=lambda: len(server.requests) >= 12)
        sent_before = len(server.requests)
        assert sent_before < needed, "the kill came after the rewrite had finished"
        unfinished = incomplete_outputs(repo)
        assert any(o.startswith("results/captions/") for o in unfinished), unfinished
        snakemake(["--unlock", *config], repo)
        snakemake(["--cores", "2", "--rerun-incomplete", *config], repo)
        sent_after = len(server.requests) - sent_before
    finally:
        server.close()
    assert_same_artifacts(repo, ref)
    # the cache survived the kill: the rerun sent less than a full rewrite, and nothing came back twice beyond
    # the answers in flight at the kill (at most one unflushed batch per running job)
    assert sent_after <= needed - 4
    assert sent_before + sent_after <= needed + 2 * 4
    assert_only_interrupted_jobs_redone(repo, before, unfinished)
    # the key reached the endpoint and no file: results, logs, the LLM cache, Snakemake's metadata
    leaks = [str(p.relative_to(repo)) for p in repo.rglob("*")
             if p.is_file() and ".venv" not in p.parts and LLM_KEY.encode() in p.read_bytes()]
    assert leaks == []


def assert_only_interrupted_jobs_redone(repo: Path, before: dict[str, float], unfinished: list[str]) -> None:
    """Outputs of jobs complete at the kill were not rewritten: the rerun redid only the jobs Snakemake had
    marked incomplete (with 2 cores, two jobs may be running; a report job's directory may already hold some
    files; a killed writer's temporary file is debris, not an output: the rerun removes it)."""
    assert unfinished, "no job was running at the kill"
    inside = tuple(o + "/" for o in unfinished)  # files of a directory output
    rewritten = [k for k, mtime in before.items()
                 if not Path(k).name.startswith(".") and not (k in unfinished or k.startswith(inside))
                 and (repo / k).stat().st_mtime != mtime]
    assert rewritten == []


def _python_sources():
    return sorted(SRC.rglob("*.py"))


def test_torch_load_only_with_weights_only():
    offenders = []
    for path in _python_sources():
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{no}")
    assert offenders == []


def test_no_pickle_reads_from_artifacts():
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|allow_pickle\s*=\s*True|\bjoblib\.load\(|read_pickle\(")
    offenders = [f"{p.relative_to(ROOT)}:{no}" for p in _python_sources()
                 for no, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
