# Stage 2, faces: detect, filter and align faces in every collected image, one job per shard.
# threads: resources.faces.threads (Snakemake exports it as OMP_NUM_THREADS = onnxruntime's intra-op threads);
# batch size: faces.batch_size.


rule faces:
    input:
        deps("faces"),
    output:
        outs("faces"),
    params:
        cfg=cfg("faces"),
    conda:
        CONDA_ENV
    log:
        "logs/faces/{shard}.log",
    message:
        "faces: detect and align faces in shard {wildcards.shard} ({config[faces][detector]})"
    threads: threads_of("faces", 1)
    resources:
        **resources_of("faces", 2000),
    shell:
        "facecaption faces --cfg {params.cfg:q} --shard {wildcards.shard} 2> {log}"


rule report_faces:
    input:
        deps("report_faces"),
    output:
        outs("report_faces"),
    params:
        cfg=cfg("report_faces"),
    conda:
        CONDA_ENV
    log:
        "logs/report_faces.log",
    message:
        "report: face funnel and detection audit"
    resources:
        **resources_of("report_faces", 2000),
    shell:
        "facecaption report_faces --cfg {params.cfg:q} 2> {log}"
