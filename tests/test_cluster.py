"""The SLURM profile on a real single-node SLURM: every job goes through sbatch, artifacts equal a local run.

Starts munge, slurmctld and slurmd on this machine (root; Debian packages from .ci/setup-system.sh). When
SLURM cannot start, the test fails and says why — it never passes silently.
"""

from __future__ import annotations

import re

import pytest
from support.repo import TEST_CONFIG, assert_same_artifacts, copy_repo, snakemake
from support.slurm import Slurm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()  # raises SlurmUnavailable with the reason
    yield cluster
    cluster.stop()


def test_profile_runs_every_job_through_sbatch(slurm, pipeline, tmp_path):
    repo = copy_repo(tmp_path / "repo", src=pipeline)
    proc = snakemake(["--profile", "profiles/slurm", *TEST_CONFIG, "--slurm-no-account", "--jobs", "4",
                      "--slurm-init-seconds-before-status-checks", "2"], repo, timeout=1500)
    log = proc.stdout + proc.stderr
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log, flags=re.I)
    planned = snakemake(["-n", "--forceall", *TEST_CONFIG], repo).stdout
    total = int(re.search(r"^total\s+(\d+)", planned, flags=re.M).group(1))
    # every job but the target rule `all` (a local rule) was submitted with sbatch
    assert len(submitted) == total - 1, log[-3000:]
    assert (repo / "paper/build/paper.pdf").exists()
    assert_same_artifacts(repo, pipeline)
