# Stage 4, captions: grammar captions from the kept attribute labels (+ optional LLM rewrite, cached under
# cache/llm/ outside the outputs) into training shards.


rule captions:
    input:
        unpack(inputs("captions")),
    output:
        **outputs("captions"),
    params:
        cfg=rerun_key("captions"),
        shards=shards_arg("captions"),
    conda:
        CONDA_ENV
    log:
        "logs/captions/{shard}.log",
    message:
        "captions: grammar captions for the kept faces of shard {wildcards.shard}"
    threads: 1
    resources:
        fc_runtime=runtime_key("captions"),
        **resources_of("captions", 2000),
    shell:
        "facecaption captions --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} --shard {wildcards.shard} 2> {log}"


rule report_captions:
    input:
        unpack(inputs("report_captions")),
    output:
        **outputs("report_captions"),
    params:
        cfg=rerun_key("report_captions"),
        shards=shards_arg("report_captions"),
    conda:
        CONDA_ENV
    log:
        "logs/report_captions.log",
    message:
        "report: caption statistics, faithfulness audit and examples"
    resources:
        fc_runtime=runtime_key("report_captions"),
        **resources_of("report_captions", 2000),
    shell:
        "facecaption report_captions --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
