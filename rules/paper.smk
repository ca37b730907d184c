# Last stage: compile the paper (Typst) from the reports; tables also as LaTeX for authors.


rule paper:
    input:
        deps("paper"),
    output:
        outs("paper"),
    params:
        cfg=cfg("paper"),
    conda:
        CONDA_ENV
    log:
        "logs/paper.log",
    message:
        "paper: compiling paper/build/paper.pdf"
    resources:
        **resources_of("paper", 2000),
    shell:
        "facecaption paper --cfg {params.cfg:q} 2> {log}"


rule report_cost:
    input:
        deps("report_cost"),
    output:
        outs("report_cost"),
    params:
        cfg=cfg("report_cost"),
    conda:
        CONDA_ENV
    log:
        "logs/report_cost.log",
    message:
        "report: cost of the 50M-URL run, projected from the benchmarks"
    resources:
        **resources_of("report_cost", 1000),
    shell:
        "facecaption report_cost --cfg {params.cfg:q} 2> {log}"
