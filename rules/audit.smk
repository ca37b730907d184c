# Stage audit: contamination between the pre-training pool (caption shards) and every evaluation set's test split:
# near copies by perceptual hash, the same identities by face embeddings (faiss), recall/precision on planted truth.


rule audit:
    input:
        unpack(inputs("audit")),
    output:
        **outputs("audit"),
    params:
        cfg=rerun_key("audit"),
        shards=shards_arg("audit"),
    conda:
        CONDA_ENV
    log:
        "logs/audit.log",
    message:
        "audit: test splits against the pre-training pool (near copies, identities)"
    threads: threads_of("audit", 1)
    resources:
        fc_runtime=runtime_key("audit"),
        **resources_of("audit", 3000),
    shell:
        "OMP_NUM_THREADS={threads} FACECAPTION_THREADS={threads} "
        "facecaption audit --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} {params.shards} 2> {log}"
