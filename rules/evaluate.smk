# Stage evaluate: frozen-encoder linear probe, retrieval and zero-shot attributes for FLIP, the same
# architecture with random weights and local open_clip baselines (evaluate.baselines).


rule evaluate:
    input:
        unpack(inputs("evaluate")),
    output:
        **outputs("evaluate"),
    params:
        cfg=rerun_key("evaluate"),
        shards=shards_arg("evaluate"),
    conda:
        CONDA_ENV
    log:
        "logs/evaluate.log",
    message:
        "evaluate: linear probe, retrieval and zero-shot attributes (FLIP vs baselines)"
    threads: threads_of("evaluate", 2)
    resources:
        fc_runtime=runtime_key("evaluate"),
        **resources_of("evaluate", 4000),
    shell:
        "facecaption evaluate --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
