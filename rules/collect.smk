# Stage 1, collect: images into webdataset shards (synthface, or real sources selected by config.source).


rule collect:
    input:
        unpack(inputs("collect")),
    output:
        **outputs("collect"),
    params:
        cfg=rerun_key("collect"),
        shards=shards_arg("collect"),
    conda:
        CONDA_ENV
    log:
        "logs/collect/{shard}.log",
    message:
        "collect: shard {wildcards.shard} from source '{config[source]}'"
    threads: 1
    resources:
        fc_runtime=runtime_key("collect"),
        **resources_of("collect", 1500),
    shell:
        "facecaption collect --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} --shard {wildcards.shard} 2> {log}"


rule labeled:
    output:
        **outputs("labeled"),
    params:
        cfg=rerun_key("labeled"),
        shards=shards_arg("labeled"),
    conda:
        CONDA_ENV
    log:
        "logs/labeled.log",
    message:
        "labeled: the attribute-labeled train/val/test splits"
    threads: 1
    resources:
        fc_runtime=runtime_key("labeled"),
        **resources_of("labeled", 2000),
    shell:
        "facecaption labeled --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"


rule report_corpus:
    input:
        unpack(inputs("report_corpus")),
    output:
        **outputs("report_corpus"),
    params:
        cfg=rerun_key("report_corpus"),
        shards=shards_arg("report_corpus"),
    conda:
        CONDA_ENV
    log:
        "logs/report_corpus.log",
    message:
        "report: corpus statistics and figures"
    resources:
        fc_runtime=runtime_key("report_corpus"),
        **resources_of("report_corpus", 2000),
    shell:
        "facecaption report_corpus --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
