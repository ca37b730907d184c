# Quality: per-face image metrics and per-caption text metrics per shard, then Table 1, the quality
# histograms, the n-gram curve, text–image relevance and the dataset card (see docs/ARCHITECTURE.md).


rule quality:
    input:
        deps("quality"),
    output:
        outs("quality"),
    params:
        cfg=cfg("quality"),
    conda:
        CONDA_ENV
    log:
        "logs/quality/{shard}.log",
    message:
        "quality: image and text metrics of shard {wildcards.shard}"
    threads: threads_of("quality", 1)
    resources:
        **resources_of("quality", 2000),
    shell:
        "OMP_NUM_THREADS={threads} facecaption quality --cfg {params.cfg:q} --shard {wildcards.shard} 2> {log}"


rule report_quality:
    input:
        deps("report_quality"),
    output:
        outs("report_quality"),
    params:
        cfg=cfg("report_quality"),
    conda:
        CONDA_ENV
    log:
        "logs/report_quality.log",
    message:
        "report: Table 1, quality histograms, relevance and the dataset card"
    threads: threads_of("report_quality", 1)
    resources:
        **resources_of("report_quality", 4000),
    shell:
        "OMP_NUM_THREADS={threads} facecaption report_quality --cfg {params.cfg:q} 2> {log}"
