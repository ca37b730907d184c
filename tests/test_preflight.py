"""A config asking for a GPU where CUDA is missing: one line naming the key, before any job runs (issue 15).

Run with this machine's real onnxruntime and torch: on CI and the developers' machines a CPU-only onnxruntime
and a torch without a CUDA device, where every check must stop. On a machine where CUDA does work, the
tests that need it missing are skipped (they say so).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
import tomllib

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_stage, tiny_config
from test_faces_insightface import _ins, fake_scrfd, square_image

from facecaption import preflight as P
from facecaption.core import devices as D
from facecaption.core.config import ConfigError
from facecaption.core.shards import read_parquet
from facecaption.faces.detect import InsightFaceDetector, ModelMissing

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
GPU_FACES = {"detector": "insightface", "insightface": {"device": "cuda"}}


@pytest.fixture(scope="module")
def ort_problem():
    """Why onnxruntime cannot run on CUDA here (the child-process probe that Snakemake's check uses)."""
    problem = D.onnxruntime_cuda_problem(probe=True)
    if problem is None:
        pytest.skip("onnxruntime runs on CUDA on this machine")
    return problem


@pytest.fixture(scope="module")
def torch_problem():
    problem = D.torch_cuda_problem()
    if problem is None:
        pytest.skip("torch finds a CUDA device on this machine")
    return problem


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return fake_scrfd(tmp_path_factory.mktemp("pack") / "det_fake.onnx")


def _one_line(exc) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------------- check_devices


def test_faces_device_cuda_without_cuda_stops_naming_the_key(ort_problem):
    cfg = tiny_config(faces=GPU_FACES)
    with pytest.raises(ConfigError) as err:
        P.check_devices(cfg, local=True)
    msg = _one_line(err.value)
    assert msg.startswith("config error: faces.insightface.device: cuda, but ")
    assert ort_problem in msg
    # the fixes: the CPU, the fallback key, and (no GPU runtime) the GPU runtime's exact pins
    assert msg.endswith("; or set faces.insightface.device: cpu, or faces.insightface.cuda_fallback: cpu")
    if D.onnxruntime_build_problem():  # this machine's locked environment: onnxruntime 1.32.0, CPU-only
        import onnxruntime

        assert f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (a CPU-only build)" in msg
        assert "install the GPU runtime: pip install --force-reinstall --no-deps onnxruntime-gpu==1.31.1 " in msg


def test_faces_cuda_fallback_cpu_warns_in_one_line(ort_problem):
    cfg = tiny_config(faces={**GPU_FACES, "insightface": {"device": "cuda", "cuda_fallback": "cpu"}})
    warnings = P.check_devices(cfg, local=True)
    assert warnings == [f"warning: faces.insightface.device: cuda, but {ort_problem}; the faces stage runs on CPU "
                        "(faces.insightface.cuda_fallback: cpu)"]
    assert D.faces_device(cfg["faces"]["insightface"]) == ("cpu", warnings[0][len("warning: "):])


@pytest.mark.parametrize("faces", [
    {"detector": "insightface", "insightface": {"device": "cpu"}},
    {"detector": "centerface", "insightface": {"device": "cuda"}},  # the insightface device is not used
    {},  # the embedded default
])
def test_no_gpu_asked_no_error(faces):
    assert P.check_devices(tiny_config(faces=faces), local=True) == []


def test_submitted_jobs_are_not_checked_on_the_submitting_machine():
    """With a cluster executor the jobs run elsewhere: Snakemake's check passes, the stages check at start."""
    cfg = tiny_config(faces=GPU_FACES, train={"accelerator": "gpu"}, resources={"train": {"gpus": 8}})
    assert P.check_devices(cfg, local=False) == []


def test_train_accelerator_gpu_without_cuda_stops_naming_the_key(torch_problem):
    cfg = tiny_config(train={"accelerator": "gpu"})
    with pytest.raises(ConfigError) as err:
        P.check_devices(cfg, local=True)
    msg = _one_line(err.value)
    assert msg.startswith(f"config error: train.accelerator: gpu, but {torch_problem}; ")
    assert "train.accelerator: auto" in msg
    # the train stage's own check, at its start, says the same
    with pytest.raises(ConfigError) as again:
        D.require_cuda_for_train(cfg)
    assert str(again.value) == msg
    for acc in ("auto", "cpu"):
        D.require_cuda_for_train(tiny_config(train={"accelerator": acc}))


def test_resources_gpus_for_a_local_run_without_cuda_stops_naming_the_key(torch_problem):
    cfg = tiny_config(resources={"train": {"gpus": 2}})
    with pytest.raises(ConfigError) as err:
        P.check_devices(cfg, local=True)
    msg = _one_line(err.value)
    assert msg.startswith(f"config error: resources.train.gpus: 2, but {torch_problem}")
    assert "resources.train.gpus: 0" in msg and "--profile profiles/slurm" in msg
    assert P.check_devices(tiny_config(resources={"train": {"gpus": 0}}), local=True) == []


def test_the_fix_fits_the_problem():
    """No GPU runtime, or a CUDA library missing: install it; the runtime there but no GPU: go where one is."""
    assert D.GPU_INSTALL in D.faces_fix("onnxruntime 1.32.0 has no CUDAExecutionProvider (a CPU-only build)")
    assert D.GPU_INSTALL in D.faces_fix("onnxruntime 1.31.1 could not start CUDA here: a CUDA library cannot be "
                                        "loaded (libcurand.so.10: cannot open shared object file)")
    for why in ("no NVIDIA driver on this machine (libcuda.so.1 not found)", "the NVIDIA driver sees no GPU"):
        fix = D.faces_fix(f"onnxruntime 1.31.1 could not start CUDA here: {why}")
        assert D.GPU_INSTALL not in fix and fix.startswith("run it where a GPU is visible")


def test_probe_command_reports_why_in_its_last_line(ort_problem):
    proc = subprocess.run([sys.executable, "-m", "facecaption.core.devices", "--probe-onnxruntime-cuda"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stdout.strip() == ort_problem


# ------------------------------------------------------------------------------ the faces stage's own check


def test_faces_stage_with_device_cuda_stops_at_its_start_with_the_one_line(workdir, capsys, fake_model, ort_problem):
    """The check of a job submitted to a cluster node: the stage itself, before it reads its shard."""
    from test_faces import write_collect_shard

    write_collect_shard("00000", {"sq": square_image()})
    cfg = tiny_config(faces={"detector": "insightface", "min_size": 16, "insightface": _ins(fake_model, device="cuda")})
    assert run_stage("faces", cfg, "00000") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("config error: faces.insightface.device: cuda, but ")
    assert ort_problem in err[0] and D.faces_fix(ort_problem) in err[0]
    assert not (workdir / "results/faces/00000.parquet").exists()
    with pytest.raises(ModelMissing, match="faces.insightface.device: cuda"):
        InsightFaceDetector(_ins(fake_model, device="cuda"))


def test_faces_stage_with_cuda_fallback_runs_on_cpu_with_one_warning(workdir, capsys, fake_model, ort_problem):
    from test_faces import write_collect_shard

    write_collect_shard("00000", {"sq": square_image(), "dark": np.zeros((96, 96, 3), np.uint8)})
    ins = _ins(fake_model, device="cuda", cuda_fallback="cpu")
    cfg = tiny_config(faces={"detector": "insightface", "min_size": 16, "min_score": {"insightface": 0.98},
                             "insightface": ins})
    assert run_stage("faces", cfg, "00000") == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "faces.insightface.device: cuda" in ln]
    assert len(warned) == 1 and "WARNING" in warned[0], warned
    assert warned[0].endswith("the faces stage runs on CPU (faces.insightface.cuda_fallback: cpu)")
    faces = read_parquet("results/faces/00000.parquet")
    assert list(faces.image_key) == ["00000_sq"]  # the same detections as on device: cpu
    det = InsightFaceDetector(ins)
    assert det.device == "cpu" and det.model.session.get_providers() == ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------- Snakemake


def _dry_run(tmp_path, overlay: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return subprocess.run([*SNAKEMAKE, "-n", *extra, "--configfile", str(ROOT / "tests/config.test.yaml"), str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_snakemake_stops_before_any_job_when_cuda_is_missing(tmp_path, ort_problem):
    """Needs the lines of rules/common.smk that call facecaption.preflight (check_devices, jobs_run_here)."""
    proc = _dry_run(tmp_path, {"faces": GPU_FACES})
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "config error" in ln]
    assert proc.returncode == 1, out[-3000:]
    assert len(lines) == 1 and lines[0].startswith("config error: faces.insightface.device: cuda, but "), out[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == lines  # nothing but the one line
    assert "Job stats" not in out and not re.search(r"^Job \d+:", out, flags=re.M)  # no job planned


def test_snakemake_falls_back_with_one_warning_line(tmp_path, ort_problem, fake_model):
    proc = _dry_run(tmp_path, {"faces": {**GPU_FACES, "insightface": {"device": "cuda", "cuda_fallback": "cpu",
                                                                      "model_file": str(fake_model)}}})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    warned = [ln for ln in out.splitlines() if "faces.insightface.device: cuda" in ln]
    assert warned == [f"warning: faces.insightface.device: cuda, but {ort_problem}; the faces stage runs on CPU "
                      "(faces.insightface.cuda_fallback: cpu)"]


def test_snakemake_with_a_cluster_profile_does_not_check_the_login_node(tmp_path, ort_problem, torch_problem,
                                                                       fake_model):
    """The SLURM profile: Snakemake runs on a login node without GPUs, the jobs on GPU nodes: no stop here
    (the model pack, an input on shared storage, is still checked there)."""
    faces = {**GPU_FACES, "insightface": {**GPU_FACES["insightface"], "model_file": str(fake_model)}}
    gpus = {"faces": faces, "train": {"accelerator": "gpu"}, "resources": {"train": {"gpus": 1}}}
    proc = _dry_run(tmp_path, gpus, "--profile", "profiles/slurm", "--slurm-no-account")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "config error" not in out and "warning: faces" not in out
    assert re.search(r"^faces\s+2$", proc.stdout, flags=re.M), out[-3000:]  # both faces jobs planned


def test_a_job_started_without_the_early_check_fails_at_its_start_with_the_one_line(tmp_path, fake_model, ort_problem):
    """What a job submitted to a GPU node does when CUDA is missing there: Snakemake did not check (here:
    --jobs, as with a cluster executor), the faces job stops before it reads its shard, its log holds the line."""
    from support.repo import TEST_CONFIG, copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    overlay = tmp_path / "gpu.yaml"
    ins = {"model_file": str(fake_model), "det_size": 320, "device": "cuda"}
    overlay.write_text(yaml.safe_dump({"faces": {"detector": "insightface", "min_size": 16, "insightface": ins}}))
    proc = snakemake(["--cores", "2", "--jobs", "2", *TEST_CONFIG, str(overlay), "--", "results/faces/00000.parquet"],
                     repo, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Error in rule faces" in proc.stderr and (repo / "results/collect/00000.tar").exists()
    log = (repo / "logs/faces/00000.log").read_text().splitlines()
    assert log == [f"config error: faces.insightface.device: cuda, but {ort_problem}; {D.faces_fix(ort_problem)}"]
    assert not (repo / "results/faces/00000.tar").exists()


def test_jobs_run_here_reads_how_snakemake_runs(tmp_path):
    """jobs_run_here(workflow) in a real Snakefile: the main process of a local run (dry or not) checks; a
    cluster executor's main process does not (--profile profiles/slurm, --executor slurm --jobs N), nor the
    Snakemake that the local executor starts for a job (exec mode subprocess; a SLURM job's is remote)."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""\
        import os
        from facecaption.preflight import jobs_run_here
        with open("parses.txt", "a") as f:
            f.write(f"{workflow.exec_mode.name} {jobs_run_here(workflow)}\\n")
        rule all:
            input: "a.txt"
        rule a:
            output: "a.txt"
            run:
                open(output[0], "w").write("x")
        """))

    def parses(*args):
        (tmp_path / "parses.txt").unlink(missing_ok=True)
        (tmp_path / "a.txt").unlink(missing_ok=True)
        proc = subprocess.run([*SNAKEMAKE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return (tmp_path / "parses.txt").read_text().splitlines()

    assert parses("-n") == ["DEFAULT True"]
    assert parses("-n", "--cores", "2") == ["DEFAULT True"]
    assert parses("-n", "--profile", str(ROOT / "profiles/slurm"), "--slurm-no-account") == ["DEFAULT False"]
    assert parses("-n", "--executor", "slurm", "--jobs", "3", "--slurm-no-account") == ["DEFAULT False"]
    assert parses("--cores", "1") == ["DEFAULT True", "SUBPROCESS False"]  # the run: job re-reads the Snakefile
    assert parses("--jobs", "1") == ["DEFAULT True", "SUBPROCESS False"]  # --jobs alone = --cores, locally


# ----------------------------------------------------------------------------------- the GPU runtime's pins


def test_gpu_runtime_pins_agree_everywhere():
    """preflight.GPU_PINS = requirements-gpu.lock = pyproject's [gpu] extra = what envs/facecaption-gpu.yaml adds
    to requirements.lock and what its post-deploy script reinstalls; libcurand at cuda-toolkit's version."""
    pins = list(D.GPU_PINS)
    lock = [ln.strip() for ln in (ROOT / "requirements-gpu.lock").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert lock == pins
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert extra == pins
    cpu = [ln.strip() for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln.strip()]
    env = yaml.safe_load((ROOT / "envs/facecaption-gpu.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == cpu + pins and "python=3.11" in env["dependencies"]
    post = (ROOT / "envs/facecaption-gpu.post-deploy.sh").read_text()
    assert f"pip install --force-reinstall --no-deps {' '.join(pins)}" in post
    assert D.GPU_INSTALL == f"pip install --force-reinstall --no-deps {' '.join(pins)}"
    # the CPU runtime it replaces is the one requirements.lock pins
    assert "onnxruntime==1.32.0" in cpu
    # torch's CUDA libraries come from cuda-toolkit; libcurand must be that toolkit's
    toolkit = next(p for p in cpu if p.startswith("cuda-toolkit=="))
    curand = [r for r in importlib.metadata.requires("cuda-toolkit") or [] if r.startswith("nvidia-curand")]
    assert curand and re.match(r"nvidia-curand==([\d.]+)\.\*", curand[0]).group(1) == \
        next(p for p in pins if p.startswith("nvidia-curand==")).split("==")[1], (toolkit, curand)


# -- inputs on disk and endpoints, before the first job -------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_missing_start_weights_stop_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        P.check_inputs(tiny_config(train={"init": str(tmp_path / "ViT-B-16-openai.bin")}))
    assert _one_line(exc.value).startswith("config error: train.init: weights file ")
    (tmp_path / "ViT-B-16-openai.bin").write_bytes(b"x")
    P.check_inputs(tiny_config(train={"init": str(tmp_path / "ViT-B-16-openai.bin")}))


def test_missing_insightface_pack_stops_naming_the_key(tmp_path):
    cfg = tiny_config(faces={"detector": "insightface", "insightface": {"model_dir": str(tmp_path), "device": "cpu"}})
    with pytest.raises(ConfigError) as exc:
        P.check_inputs(cfg)
    assert _one_line(exc.value).startswith("config error: faces.insightface: insightface model pack 'buffalo_l' not found")


def test_llm_endpoint_checked_before_any_job(monkeypatch):
    from support.llm import FakeLLM

    down = {"enabled": True, "base_url": f"http://127.0.0.1:{_closed_port()}/v1"}
    with pytest.raises(ConfigError) as exc:
        P.check_inputs(tiny_config(captions={"llm": down}))
    assert _one_line(exc.value).startswith(f"config error: captions.llm.base_url: {down['base_url']} does not answer")
    server = FakeLLM()
    try:
        up = {"enabled": True, "base_url": server.url, "api_key_env": "FC_PREFLIGHT_KEY"}
        monkeypatch.delenv("FC_PREFLIGHT_KEY", raising=False)
        with pytest.raises(ConfigError) as exc:
            P.check_inputs(tiny_config(captions={"llm": up}))
        assert _one_line(exc.value).startswith("config error: captions.llm.api_key_env: the environment variable "
                                         "FC_PREFLIGHT_KEY is not set")
        monkeypatch.setenv("FC_PREFLIGHT_KEY", "k")
        P.check_inputs(tiny_config(captions={"llm": up}))  # a server that answers (any status) passes
    finally:
        server.close()
