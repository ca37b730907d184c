# Stage 4, captions: grammar captions from the kept attribute labels (+ optional LLM rewrite, cached under
# cache/llm/ outside the outputs) into training shards.


rule captions:
    input:
        deps("captions"),
    output:
        outs("captions"),
    params:
        cfg=cfg("captions"),
    conda:
        CONDA_ENV
    log:
        "logs/captions/{shard}.log",
    message:
        "captions: grammar captions for the kept faces of shard {wildcards.shard}"
    threads: 1
    resources:
        **resources_of("captions", 2000),
    shell:
        "facecaption captions --cfg {params.cfg:q} --shard {wildcards.shard} 2> {log}"


rule report_captions:
    input:
        deps("report_captions"),
    output:
        outs("report_captions"),
    params:
        cfg=cfg("report_captions"),
    conda:
        CONDA_ENV
    log:
        "logs/report_captions.log",
    message:
        "report: caption statistics, faithfulness audit and examples"
    resources:
        **resources_of("report_captions", 2000),
    shell:
        "facecaption report_captions --cfg {params.cfg:q} 2> {log}"
