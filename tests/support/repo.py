"""Copies of the working tree for end-to-end runs, and content hashes of what a run produced."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SKIP = {".venv", ".git", ".snakemake", "build", "__pycache__", ".pytest_cache"}
SKIP_TOP = {"results", "logs", "cache"}  # generated at the top level (benchmarks/results is a source)
TEST_CONFIG = ["--configfile", "tests/config.test.yaml"]


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}:{e.get('PATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def copy_repo(dst: Path, git: bool = False, src: Path = ROOT) -> Path:
    """The working tree of ``src`` (sources only) copied to ``dst``; optionally a git repo with one commit."""
    src = Path(src)

    def ignore(folder, names):
        top = Path(folder) == src
        return [n for n in names if n in SKIP or n.endswith(".egg-info") or (top and n in SKIP_TOP)]

    shutil.copytree(src, dst, ignore=ignore)
    if git:
        run(["git", "init", "-q"], dst)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dst)
    return dst


def run(cmd: list[str], cwd: Path, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def snakemake(args: list[str], cwd: Path, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), *args], cwd, timeout=timeout, check=check)


def digests(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_file() and not any(rel.startswith(e) for e in exclude):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_same_artifacts(a: Path, b: Path) -> None:
    """The ``results/`` of two runs hold the same files with the same bytes (wall-clock facts live in logs/)."""
    first, second = digests(a / "results"), digests(b / "results")
    assert first.keys() == second.keys()
    differ = sorted(k for k in first if first[k] != second[k])
    assert differ == [], f"these artifacts differ between the runs: {differ}"
