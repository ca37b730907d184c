# Stage 2, faces: detect, filter and align faces in every collected image, one job per shard.
# threads: resources.faces.threads (Snakemake exports it as OMP_NUM_THREADS = onnxruntime's intra-op threads);
# batch size: faces.batch_size.


rule faces:
    input:
        unpack(inputs("faces")),
    output:
        **outputs("faces"),
    params:
        cfg=rerun_key("faces"),
        shards=shards_arg("faces"),
    conda:
        CONDA_ENV
    log:
        "logs/faces/{shard}.log",
    message:
        "faces: detect and align faces in shard {wildcards.shard} ({config[faces][detector]})"
    threads: threads_of("faces", 1)
    resources:
        fc_runtime=runtime_key("faces"),
        **resources_of("faces", 2000),
    shell:
        "facecaption faces --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} --shard {wildcards.shard} 2> {log}"


rule report_faces:
    input:
        unpack(inputs("report_faces")),
    output:
        **outputs("report_faces"),
    params:
        cfg=rerun_key("report_faces"),
        shards=shards_arg("report_faces"),
    conda:
        CONDA_ENV
    log:
        "logs/report_faces.log",
    message:
        "report: face funnel and detection audit"
    resources:
        fc_runtime=runtime_key("report_faces"),
        **resources_of("report_faces", 2000),
    shell:
        "facecaption report_faces --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
