"""Devices: whether CUDA is usable here for onnxruntime (faces) and torch (train), and what to do when not.

The checks that use these before any job runs are in :mod:`facecaption.preflight`.

Two places run them:

* Snakemake, while it reads the Snakefile (``rules/common.smk``), before any job runs: :func:`check_devices`,
  when :func:`jobs_run_here` says that the jobs run on this machine;
* each stage at its start, for the jobs Snakemake submits to a cluster (the login node that runs Snakemake
  has no GPU; the node that runs the job may): the faces stage through :func:`faces_device`, the train stage
  through :func:`require_cuda_for_train`.

The faces stage runs on onnxruntime. PyPI's ``onnxruntime`` (pinned in requirements.lock) is CPU-only; the
CUDA build is the separate distribution ``onnxruntime-gpu``, which installs the same ``onnxruntime`` module.
With ``faces.insightface.cuda_fallback: cpu`` the faces stage runs on CPU instead, with one warning line.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import subprocess
import sys
from collections.abc import Iterator

from facecaption.core.config import ConfigError

# The GPU runtime of the faces stage, installed over requirements.lock (README, "The faces stage on a GPU";
# requirements-gpu.lock and envs/facecaption-gpu.yaml hold the same pins; tests/test_preflight.py checks).
# onnxruntime-gpu 1.31.1 is the registry's newest (there is no 1.32.0); it is built for CUDA 13 and cuDNN 9,
# the CUDA of torch's wheels in requirements.lock, which bring every CUDA library it loads but libcurand.
# --force-reinstall --no-deps: both distributions write onnxruntime/, and the one written last wins (pip
# installs onnxruntime-gpu before onnxruntime when it installs both at once, e.g. `pip install .[gpu]`).
GPU_PINS = ("onnxruntime-gpu==1.31.1", "nvidia-curand==10.4.2.66")
GPU_INSTALL = "pip install --force-reinstall --no-deps " + " ".join(GPU_PINS)
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
FACES_OR = "or set faces.insightface.device: cpu, or faces.insightface.cuda_fallback: cpu"
TRAIN_FIX = ("set train.accelerator: auto (GPUs when there are any, else CPU) or cpu, "
             "or run on GPU nodes (--profile profiles/slurm with resources.train.gpus)")
PROBE_TIMEOUT_S = 300
START_FAILED = " could not start CUDA here: "
NO_GPU = ("no NVIDIA driver", "the NVIDIA driver sees no GPU")  # how _why_no_cuda says that no GPU is visible


# ---------------------------------------------------------------------------------------------- onnxruntime


def onnxruntime_build_problem() -> str | None:
    """None when the installed onnxruntime was built with CUDA, else why not (a clause for the error line)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (a CPU-only build)"


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Silence onnxruntime while it tries CUDA: its own log lines and prints say what our one line says."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # fatal only: no "Failed to load library ..." / "Failed to create ..."
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "Falling back to ['CPUExecutionProvider'] ..."
            yield
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warning)


def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries of the pip ``nvidia-*`` wheels (torch's) so that onnxruntime finds
    them without LD_LIBRARY_PATH (onnxruntime >= 1.21; a no-op for a CPU-only build)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Failed to load ..." per missing library
        try:
            preload()
        except Exception:  # noqa: BLE001 - the session's providers tell whether CUDA started
            pass


def session_cuda_problem(session) -> str | None:
    """None when ``session`` (an onnxruntime InferenceSession asked for CUDA) runs on CUDA, else why not."""
    if "CUDAExecutionProvider" in session.get_providers():
        return None
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}{START_FAILED}{_why_no_cuda()}"


def _why_no_cuda() -> str:
    """The first thing missing for onnxruntime's CUDA provider: the driver, a library, or a GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver on this machine (libcuda.so.1 not found)"
    import onnxruntime as ort

    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        ctypes.CDLL(os.path.join(capi, "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.path.join(capi, "libonnxruntime_providers_cuda.so"))
    except OSError as exc:  # "libcurand.so.10: cannot open shared object file: ..." or ".../x.so: undefined symbol: y"
        head, _, rest = str(exc).partition(": ")
        return f"a CUDA library cannot be loaded ({os.path.basename(head)}: {rest})"
    count = ctypes.c_int(0)
    rc = cuda.cuInit(0)
    if rc == 0:
        rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = [f"CUDA_VISIBLE_DEVICES={visible}"] if visible is not None else []
        why += [f"CUDA error {rc}"] if rc else []
        return "the NVIDIA driver sees no GPU" + (f" ({', '.join(why)})" if why else "")
    return "its CUDA provider did not start (CUDA 13 and cuDNN 9 are needed)"


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def probe_onnxruntime_cuda() -> str | None:
    """Start onnxruntime on CUDA in this process (a one-node model); None when it runs there, else why not."""
    import numpy as np
    import onnxruntime as ort

    problem = onnxruntime_build_problem()
    if problem:
        return problem
    preload_cuda()
    with quiet_onnxruntime():
        session = ort.InferenceSession(_tiny_model(), providers=CUDA_PROVIDERS)
    problem = session_cuda_problem(session)
    if problem is None:
        session.run(None, {"x": np.ones((1, 4), np.float32)})
    return problem


def onnxruntime_cuda_problem(probe: bool = True) -> str | None:
    """None when onnxruntime can run on CUDA on this machine, else why not.

    Without ``probe`` only the build is checked. With it, a CUDA session is started in a child process, so
    that the caller (Snakemake's main process) holds no CUDA context or libraries afterwards.
    """
    problem = onnxruntime_build_problem()
    if problem or not probe:
        return problem
    try:
        proc = subprocess.run([sys.executable, "-m", "facecaption.core.devices", "--probe-onnxruntime-cuda"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"starting onnxruntime on CUDA took longer than {PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    out = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["?"])[-1]
    return out if proc.returncode == 1 else f"starting onnxruntime on CUDA failed (exit {proc.returncode}): {out}"


def faces_fallback(ins: dict, problem: str) -> tuple[str, str]:
    """``faces.insightface.device: cuda`` cannot run (``problem``): ("cpu", the warning) when the config allows
    the CPU (``cuda_fallback: cpu``); else ConfigError with the one line."""
    if ins.get("cuda_fallback", "stop") == "cpu":
        return "cpu", (f"faces.insightface.device: cuda, but {problem}; the faces stage runs on CPU "
                       "(faces.insightface.cuda_fallback: cpu)")
    raise ConfigError(f"config error: faces.insightface.device: cuda, but {problem}; {faces_fix(problem)}")


def faces_fix(problem: str) -> str:
    """What to do about ``problem``: install the GPU runtime, or (runtime there, no GPU) run where a GPU is."""
    if problem.split(START_FAILED, 1)[-1].startswith(NO_GPU):
        return f"run it where a GPU is visible (e.g. --profile profiles/slurm with resources.faces.gpus: 1); {FACES_OR}"
    return f"install the GPU runtime: {GPU_INSTALL}; {FACES_OR}"


def faces_device(ins: dict, probe: bool = True) -> tuple[str, str | None]:
    """The device the insightface detector runs on, from ``faces.insightface``: ("cuda", None), ("cpu", None)
    or ("cpu", warning) after a fallback; ConfigError when CUDA is asked for, missing, and no fallback."""
    if ins.get("device", "cpu") != "cuda":
        return "cpu", None
    problem = onnxruntime_cuda_problem(probe=probe)
    if problem is None:
        return "cuda", None
    return faces_fallback(ins, problem)


# ---------------------------------------------------------------------------------------------------- torch


def torch_cuda_problem() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device (no GPU or NVIDIA driver here)"


def require_cuda_for_train(cfg: dict) -> None:
    """For the train stage, at its start: ConfigError naming ``train.accelerator`` when it is ``gpu`` and torch
    finds no CUDA device here (``auto`` and ``cpu`` never need one)."""
    if cfg.get("train", {}).get("accelerator") != "gpu":
        return
    problem = torch_cuda_problem()
    if problem:
        raise ConfigError(f"config error: train.accelerator: gpu, but {problem}; {TRAIN_FIX}")


def main(argv: list[str] | None = None) -> int:
    """``python -m facecaption.core.devices --probe-onnxruntime-cuda``: exit 0 when onnxruntime runs on CUDA here,
    else exit 1 with why not on the last line of stdout (used by :func:`onnxruntime_cuda_problem`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--probe-onnxruntime-cuda"]:
        print("usage: python -m facecaption.core.devices --probe-onnxruntime-cuda", file=sys.stderr)
        return 2
    problem = probe_onnxruntime_cuda()
    if problem:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


