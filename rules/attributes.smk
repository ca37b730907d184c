# Stage 3, attributes: train the attribute classifier on the labeled set, predict the CelebA attributes of
# every face and apply the paper's filters (label p > 0.85 either side, > 5 kept labels per face).


rule attributes_train:
    input:
        unpack(inputs("attributes_train")),
    output:
        **outputs("attributes_train"),
    params:
        cfg=rerun_key("attributes_train"),
        shards=shards_arg("attributes_train"),
    conda:
        CONDA_ENV
    log:
        "logs/attributes_train.log",
    message:
        "attributes: train the {config[attributes][arch]} classifier on the labeled set"
    threads: threads_of("attributes_train", 2)
    resources:
        fc_runtime=runtime_key("attributes_train"),
        **resources_of("attributes_train", 4000),
    shell:
        "OMP_NUM_THREADS={threads} FACECAPTION_THREADS={threads} "
        "facecaption attributes_train --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"


rule attributes:
    input:
        unpack(inputs("attributes")),
    output:
        **outputs("attributes"),
    params:
        cfg=rerun_key("attributes"),
        shards=shards_arg("attributes"),
    conda:
        CONDA_ENV
    log:
        "logs/attributes/{shard}.log",
    message:
        "attributes: predict and filter the faces of shard {wildcards.shard}"
    threads: threads_of("attributes", 1)
    resources:
        fc_runtime=runtime_key("attributes"),
        **resources_of("attributes", 3000),
    shell:
        "OMP_NUM_THREADS={threads} FACECAPTION_THREADS={threads} "
        "facecaption attributes --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} --shard {wildcards.shard} 2> {log}"


rule report_attributes:
    input:
        unpack(inputs("report_attributes")),
    output:
        **outputs("report_attributes"),
    params:
        cfg=rerun_key("report_attributes"),
        shards=shards_arg("report_attributes"),
    conda:
        CONDA_ENV
    log:
        "logs/report_attributes.log",
    message:
        "report: attribute classifier, filters and audit against the ground truth"
    resources:
        fc_runtime=runtime_key("report_attributes"),
        **resources_of("report_attributes", 2000),
    shell:
        "facecaption report_attributes --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
