# Last stage: compile the paper (Typst) from the reports; tables also as LaTeX for authors.


rule paper:
    input:
        unpack(inputs("paper")),
    output:
        **outputs("paper"),
    params:
        cfg=rerun_key("paper"),
        shards=shards_arg("paper"),
    conda:
        CONDA_ENV
    log:
        "logs/paper.log",
    message:
        "paper: compiling paper/build/paper.pdf"
    resources:
        fc_runtime=runtime_key("paper"),
        **resources_of("paper", 2000),
    shell:
        "facecaption paper --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"


rule report_cost:
    input:
        unpack(inputs("report_cost")),
    output:
        **outputs("report_cost"),
    params:
        cfg=rerun_key("report_cost"),
        shards=shards_arg("report_cost"),
    conda:
        CONDA_ENV
    log:
        "logs/report_cost.log",
    message:
        "report: cost of the 50M-URL run, projected from the benchmarks"
    resources:
        fc_runtime=runtime_key("report_cost"),
        **resources_of("report_cost", 1000),
    shell:
        "facecaption report_cost --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
