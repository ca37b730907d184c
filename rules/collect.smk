# Stage 1, collect: images into webdataset shards (synthface, or real sources selected by config.source).


rule collect:
    input:
        deps("collect"),
    output:
        outs("collect"),
    params:
        cfg=cfg("collect"),
    conda:
        CONDA_ENV
    log:
        "logs/collect/{shard}.log",
    message:
        "collect: shard {wildcards.shard} from source '{config[source]}'"
    threads: 1
    resources:
        **resources_of("collect", 1500),
    shell:
        "facecaption collect --cfg {params.cfg:q} --shard {wildcards.shard} 2> {log}"


rule labeled:
    output:
        outs("labeled"),
    params:
        cfg=cfg("labeled"),
    conda:
        CONDA_ENV
    log:
        "logs/labeled.log",
    message:
        "labeled: the attribute-labeled train/val/test splits"
    threads: 1
    resources:
        **resources_of("labeled", 2000),
    shell:
        "facecaption labeled --cfg {params.cfg:q} 2> {log}"


rule report_corpus:
    input:
        deps("report_corpus"),
    output:
        outs("report_corpus"),
    params:
        cfg=cfg("report_corpus"),
    conda:
        CONDA_ENV
    log:
        "logs/report_corpus.log",
    message:
        "report: corpus statistics and figures"
    resources:
        **resources_of("report_corpus", 2000),
    shell:
        "facecaption report_corpus --cfg {params.cfg:q} 2> {log}"
