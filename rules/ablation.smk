# The caption ablation (the paper's Table: FLIP on raw alt-text vs grammar captions vs LLM rewrites): one FLIP per
# text field (train.text = the arm), trained and evaluated exactly as the main one, into results/ablation/<arm>/.
# The arm the main FLIP already is (facecaption.workflow.main_arm) is not trained again. The arms' jobs take the
# train and evaluate rules' resources (resources.train.*, resources.evaluate.*: the same GPUs on a cluster).

for _arm in W.ARMS:

    rule:
        name:
            f"train_{_arm}"
        input:
            unpack(inputs(f"train_{_arm}")),
        output:
            **outputs(f"train_{_arm}"),
        params:
            cfg=rerun_key(f"train_{_arm}"),
            shards=shards_arg(f"train_{_arm}"),
            stage=f"train_{_arm}",
        conda:
            CONDA_ENV
        log:
            f"logs/ablation/train_{_arm}.log",
        message:
            f"ablation: FLIP on train.text = {_arm}"
        threads: threads_of("train", 2)
        resources:
            fc_runtime=runtime_key(f"train_{_arm}"),
            launcher=launcher("train"),
            **resources_of("train", 4000),
        shell:
            "{resources.launcher}facecaption {params.stage} --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"

    rule:
        name:
            f"evaluate_{_arm}"
        input:
            unpack(inputs(f"evaluate_{_arm}")),
        output:
            **outputs(f"evaluate_{_arm}"),
        params:
            cfg=rerun_key(f"evaluate_{_arm}"),
            shards=shards_arg(f"evaluate_{_arm}"),
            stage=f"evaluate_{_arm}",
        conda:
            CONDA_ENV
        log:
            f"logs/ablation/evaluate_{_arm}.log",
        message:
            f"ablation: evaluate the train.text = {_arm} FLIP"
        threads: threads_of("evaluate", 2)
        resources:
            fc_runtime=runtime_key(f"evaluate_{_arm}"),
            **resources_of("evaluate", 4000),
        shell:
            "facecaption {params.stage} --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"


rule report_ablation:
    input:
        unpack(inputs("report_ablation")),
    output:
        **outputs("report_ablation"),
    params:
        cfg=rerun_key("report_ablation"),
        shards=shards_arg("report_ablation"),
    conda:
        CONDA_ENV
    log:
        "logs/report_ablation.log",
    message:
        "report: the caption ablation"
    resources:
        fc_runtime=runtime_key("report_ablation"),
        **resources_of("report_ablation", 2000),
    shell:
        "facecaption report_ablation --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
