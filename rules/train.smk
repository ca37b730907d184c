# Stage 5, train: FLIP pre-training (open_clip + Lightning) on the caption shards, then its curves.
# Resumable checkpoints live in train.resume_dir (default cache/train/<config hash>/), outside the
# declared outputs, which Snakemake deletes when a job fails: re-running a killed job resumes there.
# On several GPUs or nodes (train.devices x train.num_nodes > 1) the SLURM job has one task per GPU
# (sbatch --nodes=<num_nodes> --ntasks-per-node=<devices> --gres=gpu:<devices>, see resources_of) and, inside
# it, {resources.launcher} is the `srun` that starts `facecaption train` once per task, as Lightning's SLURM
# environment expects; it is empty in a local run, where Lightning starts the DDP processes itself.


rule train:
    input:
        unpack(inputs("train")),
    output:
        **outputs("train"),
    params:
        cfg=rerun_key("train"),
        shards=shards_arg("train"),
    conda:
        CONDA_ENV
    log:
        "logs/train.log",
    message:
        "train: {config[train][arch]} for {config[train][max_steps]} steps"
    threads: threads_of("train", 2)
    resources:
        fc_runtime=runtime_key("train"),
        launcher=launcher("train"),
        **resources_of("train", 4000),
    shell:
        "{resources.launcher}facecaption train --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"


rule report_train:
    input:
        unpack(inputs("report_train")),
    output:
        **outputs("report_train"),
    params:
        cfg=rerun_key("report_train"),
        shards=shards_arg("report_train"),
    conda:
        CONDA_ENV
    log:
        "logs/report_train.log",
    message:
        "report: training curves"
    resources:
        fc_runtime=runtime_key("report_train"),
        **resources_of("report_train", 2000),
    shell:
        "facecaption report_train --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
