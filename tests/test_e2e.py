"""End to end: a real Snakemake run of the whole chain on the tiny test overlay, then what a user does next.

One run (session fixture) is shared: the paper is built, a dry run has nothing to do, the workflow lints
clean, a second clean run gives identical bytes, and a DVC push → fresh clone → pull leaves Snakemake with
nothing to do.
"""

from __future__ import annotations

import pytest
from support.repo import TEST_CONFIG, assert_same_artifacts, copy_repo, digests, run, snakemake

pytestmark = pytest.mark.slow


def test_paper_is_built(pipeline):
    pdf = pipeline / "paper/build/paper.pdf"
    assert pdf.exists() and pdf.stat().st_size > 20_000
    assert pdf.read_bytes().startswith(b"%PDF")
    assert list((pipeline / "results/tables").glob("*.tex"))
    assert (pipeline / "logs/paper.log").exists()


def test_nothing_to_do_after_a_full_run(pipeline):
    proc = snakemake(["-n", *TEST_CONFIG], pipeline)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_lint_is_clean(pipeline):
    proc = snakemake(["--lint", *TEST_CONFIG], pipeline)
    out = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in out


def test_same_config_same_bytes(pipeline, tmp_path):
    """Two clean runs with the same config and seed produce identical artifacts, training and the PDF
    included, so DVC records the same hashes: the second run's dvc.lock equals the first's."""
    again = copy_repo(tmp_path / "again", git=True, src=pipeline)  # DVC works inside a git repository
    snakemake(["--cores", "2", *TEST_CONFIG], again)
    assert_same_artifacts(pipeline, again)
    locks = []
    for repo in (pipeline, again):
        run(["facecaption", "dvc-yaml", "--config", "config.yaml", "--config", "tests/config.test.yaml"], repo)
        run(["dvc", "commit", "-f"], repo)
        locks.append((repo / "dvc.lock").read_text())
    assert locks[0] == locks[1] and "results/train/flip.pt" in locks[0]


@pytest.fixture(scope="module")
def pushed(pipeline, tmp_path_factory):
    """The full run's artifacts committed to DVC and pushed to a local remote; dvc.yaml/dvc.lock in git."""
    remote = tmp_path_factory.mktemp("dvc") / "remote"
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["facecaption", "dvc-yaml", "--config", "config.yaml", "--config", "tests/config.test.yaml"], pipeline)
    run(["dvc", "remote", "add", "-f", "-d", "local", str(remote)], pipeline)
    run(["dvc", "commit", "-f"], pipeline)
    run(["dvc", "push"], pipeline)
    run([*git, "add", "-A"], pipeline)
    run([*git, "commit", "-qm", "lock", "--allow-empty"], pipeline)
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"
    return remote


def test_dvc_push_clone_pull_leaves_nothing_to_do(pipeline, pushed, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    # DVC does not keep mtimes: mark the pulled outputs as up to date, as the README says
    snakemake(["--touch", "--cores", "1", *TEST_CONFIG], clone)
    proc = snakemake(["-n", *TEST_CONFIG], clone)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert digests(clone / "results") == digests(pipeline / "results")


def test_partial_pull_runs_only_the_later_stage(pipeline, pushed, tmp_path):
    """Pull only the caption shards, then retrain: the model equals the full run's, nothing upstream reruns."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    run(["dvc", "pull", "captions"], clone)
    assert not (clone / "results/faces").exists() and (clone / "results/captions").exists()
    proc = snakemake(["results/train/flip.pt", "--allowed-rules", "train", "--cores", "2", *TEST_CONFIG], clone)
    assert "rule collect" not in proc.stdout + proc.stderr
    # the model, its curves and its summary, byte for byte
    assert digests(clone / "results/train") == digests(pipeline / "results/train")
