# Quality: per-face image metrics and per-caption text metrics per shard, then Table 1, the quality
# histograms, the n-gram curve, text–image relevance and the dataset card (see docs/ARCHITECTURE.md).


rule quality:
    input:
        unpack(inputs("quality")),
    output:
        **outputs("quality"),
    params:
        cfg=rerun_key("quality"),
        shards=shards_arg("quality"),
    conda:
        CONDA_ENV
    log:
        "logs/quality/{shard}.log",
    message:
        "quality: image and text metrics of shard {wildcards.shard}"
    threads: threads_of("quality", 1)
    resources:
        fc_runtime=runtime_key("quality"),
        **resources_of("quality", 2000),
    shell:
        "OMP_NUM_THREADS={threads} facecaption quality --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} --shard {wildcards.shard} 2> {log}"


rule report_quality:
    input:
        unpack(inputs("report_quality")),
    output:
        **outputs("report_quality"),
    params:
        cfg=rerun_key("report_quality"),
        shards=shards_arg("report_quality"),
    conda:
        CONDA_ENV
    log:
        "logs/report_quality.log",
    message:
        "report: Table 1, quality histograms, relevance and the dataset card"
    threads: threads_of("report_quality", 1)
    resources:
        fc_runtime=runtime_key("report_quality"),
        **resources_of("report_quality", 4000),
    shell:
        "OMP_NUM_THREADS={threads} facecaption report_quality --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
