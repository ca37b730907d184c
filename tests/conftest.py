"""Shared fixtures: a scratch working directory and a tiny validated config.

Stage tests call ``facecaption.cli.main([...])`` in-process inside ``workdir`` (a temporary directory that
is the current directory), the way Snakemake calls the CLI from the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from facecaption.core import config as fc_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory with the repository's paper/ sources, for in-process stage runs."""
    shutil.copytree(ROOT / "paper", tmp_path / "paper", ignore=shutil.ignore_patterns("build"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_config(**overrides) -> dict:
    """config.yaml + tests/config.test.yaml + overrides, validated (defaults filled in)."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    base = fc_config.deep_merge(base, yaml.safe_load((ROOT / "tests/config.test.yaml").read_text()))
    return fc_config.validate(fc_config.deep_merge(base, overrides))


@pytest.fixture
def tiny_cfg():
    return tiny_config()


def run_stage(stage: str, cfg: dict, shard: str | None = None) -> int:
    """Run one stage in-process, as a Snakemake rule would (config passed as JSON)."""
    from facecaption.cli import main

    argv = [stage, "--cfg", json.dumps(cfg)]
    if shard is not None:
        argv += ["--shard", shard]
    return main(argv)


@pytest.fixture
def collected(workdir, tiny_cfg):
    """The tiny config's shard 00000 and labeled splits, rendered into ``workdir``."""
    assert run_stage("collect", tiny_cfg, "00000") == 0
    return tiny_cfg


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    """One compute thread per test process: predictable on 2 cores, and no oversubscription under load."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A copy of the repository after a full `snakemake --cores 2` on the tiny overlay."""
    from support.repo import TEST_CONFIG, copy_repo, snakemake

    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo", git=True)
    snakemake(["--cores", "2", *TEST_CONFIG], repo)
    return repo


