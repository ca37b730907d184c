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
        mem_mb=mem_of("paper", 2000),
    shell:
        "facecaption paper --cfg {params.cfg:q} 2> {log}"
