# Stage evaluate: frozen-encoder linear probe, retrieval and zero-shot attributes for FLIP, the same
# architecture with random weights and local open_clip baselines (evaluate.baselines).


rule evaluate:
    input:
        deps("evaluate"),
    output:
        outs("evaluate"),
    params:
        cfg=cfg("evaluate"),
    conda:
        CONDA_ENV
    log:
        "logs/evaluate.log",
    message:
        "evaluate: linear probe, retrieval and zero-shot attributes (FLIP vs baselines)"
    threads: threads_of("evaluate", 2)
    resources:
        **resources_of("evaluate", 4000),
    shell:
        "facecaption evaluate --cfg {params.cfg:q} 2> {log}"
