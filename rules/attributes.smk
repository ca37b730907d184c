# Stage 3, attributes: train the attribute classifier on the labeled set, predict the CelebA attributes of
# every face and apply the paper's filters (label p > 0.85 either side, > 5 kept labels per face).


rule attributes_train:
    input:
        deps("attributes_train"),
    output:
        outs("attributes_train"),
    params:
        cfg=cfg("attributes_train"),
    conda:
        CONDA_ENV
    log:
        "logs/attributes_train.log",
    message:
        "attributes: train the {config[attributes][arch]} classifier on the labeled set"
    threads: threads_of("attributes_train", 2)
    resources:
        **resources_of("attributes_train", 4000),
    shell:
        "OMP_NUM_THREADS={threads} FACECAPTION_THREADS={threads} "
        "facecaption attributes_train --cfg {params.cfg:q} 2> {log}"


rule attributes:
    input:
        deps("attributes"),
    output:
        outs("attributes"),
    params:
        cfg=cfg("attributes"),
    conda:
        CONDA_ENV
    log:
        "logs/attributes/{shard}.log",
    message:
        "attributes: predict and filter the faces of shard {wildcards.shard}"
    threads: threads_of("attributes", 1)
    resources:
        **resources_of("attributes", 3000),
    shell:
        "OMP_NUM_THREADS={threads} FACECAPTION_THREADS={threads} "
        "facecaption attributes --cfg {params.cfg:q} --shard {wildcards.shard} 2> {log}"


rule report_attributes:
    input:
        deps("report_attributes"),
    output:
        outs("report_attributes"),
    params:
        cfg=cfg("report_attributes"),
    conda:
        CONDA_ENV
    log:
        "logs/report_attributes.log",
    message:
        "report: attribute classifier, filters and audit against the ground truth"
    resources:
        **resources_of("report_attributes", 2000),
    shell:
        "facecaption report_attributes --cfg {params.cfg:q} 2> {log}"
