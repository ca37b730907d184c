"""Pre-flight checks, before any job runs: a config that asks for a GPU where CUDA is missing, and every file,
folder and endpoint the stages will need, stop with one line naming the key.

Snakemake runs them while it reads the Snakefile (``rules/common.smk``): :func:`check_devices` when
:func:`jobs_run_here` says that the jobs run on this machine, and :func:`check_inputs`. Jobs submitted to a
cluster check their devices at their start (the faces stage through
:func:`facecaption.core.devices.faces_device`, train through :func:`~facecaption.core.devices.require_cuda_for_train`).
This module is orchestration, like the CLI: it may import stages; stages never import it.
"""

from __future__ import annotations

import os

from facecaption.core.config import ConfigError
from facecaption.core.devices import faces_device, require_cuda_for_train, torch_cuda_problem

# ------------------------------------------------------------------------------------------------ Snakemake


def check_devices(config: dict, local: bool) -> list[str]:
    """What the config asks of this machine's GPUs, before any job runs.

    ``local``: the jobs run on this machine (:func:`jobs_run_here`); when they are submitted to a cluster
    nothing is checked here (the stages check at their start). Raises ConfigError with one line naming the
    first key that asks for CUDA where there is none; returns the warning lines of allowed fallbacks.
    """
    if not local:
        return []
    warnings = []
    faces = config.get("faces") or {}
    if faces.get("detector") == "insightface":
        _, warning = faces_device(faces.get("insightface") or {}, probe=True)
        if warning:
            warnings.append(f"warning: {warning}")
    require_cuda_for_train(config)
    for rule, res in sorted((config.get("resources") or {}).items()):
        gpus = (res or {}).get("gpus") or 0
        if gpus > 0:
            problem = torch_cuda_problem()
            if problem:
                raise ConfigError(f"config error: resources.{rule}.gpus: {gpus}, but {problem}, and the jobs run on "
                                  f"this machine; set resources.{rule}.gpus: 0, or submit the jobs to GPU nodes "
                                  "(--profile profiles/slurm)")
    return warnings


def jobs_run_here(workflow) -> bool:
    """Whether ``workflow`` (the Snakefile's ``workflow`` object, while it is being read) is Snakemake's main
    process of a run whose jobs execute on this machine, i.e. whether :func:`check_devices` should check.

    Snakemake 9 reads the Snakefile before it sets the executor (``workflow.executor_plugin`` is None then and
    ``workflow.local_exec`` is always True), so the executor cannot be asked. What is set:

    * ``workflow.exec_mode``: DEFAULT in the process you started; REMOTE when a cluster job (e.g. the SLURM
      jobstep) re-runs Snakemake on its node, where the stage checks at its start; SUBPROCESS when the local
      executor re-runs it for a job, after the main process checked: False for both.
    * ``workflow.resource_settings.nodes`` (``--jobs``): a cluster executor cannot run without it, and for the
      local executor the command line turns ``--jobs N`` into ``--cores N`` and leaves it None.

    So: the main process with no ``--jobs``. A local run given both ``--cores`` and ``--jobs`` (or ``-n --jobs``)
    counts as a cluster run: it skips this check and the stages still stop at their start.
    """
    from snakemake_interface_executor_plugins.settings import ExecMode

    if workflow.exec_mode != ExecMode.DEFAULT:
        return False
    return workflow.resource_settings.nodes is None


# ------------------------------------------------------------------------------------------- inputs on disk


def check_inputs(config: dict) -> None:
    """Every file, folder and endpoint a stage will need, checked before the first job runs (a real run finds
    a missing evaluation folder days after it started otherwise). One line naming the key, and how to get it:

    * the insightface model pack (``faces.detector: insightface``);
    * the start weights of FLIP (``train.init``) and of the attribute classifier (``attributes.weights``);
    * the LLM endpoint (``captions.llm``): its key variable is set, and the server answers at all;
    * CelebA (``labeled.source: celeba``) and every evaluation set (``evaluate.datasets``), by
      :func:`facecaption.evaluate.data.check_datasets`;
    * local baselines' weights (``evaluate.baselines[].path``).

    The URL list or image folder of the collect stage is checked when Snakemake counts the shards.
    """
    faces = config.get("faces") or {}
    if faces.get("detector") == "insightface":
        from facecaption.faces.detect import ModelMissing, find_insightface_model

        try:
            find_insightface_model(faces.get("insightface") or {})
        except ModelMissing as exc:
            raise ConfigError(f"config error: faces.insightface: {str(exc).removeprefix('faces: ')}") from None
    init = (config.get("train") or {}).get("init")
    if init and not os.path.isfile(os.path.expanduser(init)):
        raise ConfigError(f"config error: train.init: weights file {init} does not exist; put a local open_clip state "
                          "dict there (README, 'Reproduce the paper for real': OpenAI's ViT-B/16 through open_clip) "
                          "or set train.init: null for a random start")
    weights = (config.get("attributes") or {}).get("weights")
    if weights and not os.path.isfile(os.path.expanduser(weights)):
        raise ConfigError(f"config error: attributes.weights: weights file {weights} does not exist; "
                          "or set attributes.weights: null")
    for i, b in enumerate((config.get("evaluate") or {}).get("baselines") or []):
        if not os.path.isfile(os.path.expanduser(b["path"])):
            raise ConfigError(f"config error: evaluate.baselines[{i}].path: weights file {b['path']} does not exist")
    llm = (config.get("captions") or {}).get("llm") or {}
    if llm.get("enabled"):
        check_llm_endpoint(llm)
    ev = config.get("evaluate") or {}
    if ev.get("datasets") or (config.get("labeled") or {}).get("source") == "celeba":
        from facecaption.evaluate.data import check_datasets  # imports the evaluation stack: only when needed

        check_datasets(config)


def check_llm_endpoint(llm: dict, timeout_s: float = 10.0) -> None:
    """The key variable is set and the server answers (any HTTP answer to ``GET <base_url>/models``, even an
    error status: only a server that cannot be reached at all stops the run)."""
    import urllib.error
    import urllib.request

    env = llm.get("api_key_env")
    if env and not os.environ.get(env):
        raise ConfigError(f"config error: captions.llm.api_key_env: the environment variable {env} is not set "
                          "(it holds the endpoint's key; the key itself never goes in config)")
    url = llm["base_url"].rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ[env]}"} if env else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"config error: captions.llm.base_url: {llm['base_url']} does not answer ({reason}); start "
                          f"the server (e.g. `vllm serve <model> --port 8000`) or set captions.llm.enabled: false") from None
