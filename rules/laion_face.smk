# LAION-Face URL lists (docs/LAION-FACE.md): FaRL's LAION-Face sample IDs joined with the LAION-400M metadata parts
# into URL parquet parts that the URL source reads (facecaption.collect.laion_ids). A workflow of its own, run
# before the main one (whose planning counts the URL lists this step writes):
#   snakemake -s rules/laion_face.smk --cores 1 --configfile config.yaml config/paper.yaml
# (or `facecaption laion-face-urls --config config.yaml --config config/paper.yaml`), then the main workflow.
# The declared output is the summary JSON (laion_ids.summary). The URL parts in laion_ids.out are not declared:
# Snakemake would delete a declared folder before a rerun, and a rerun resumes there (finished parts are skipped).
import sys

from facecaption.collect import laion_ids as fc_laion_ids
from facecaption.core import config as fc_config


configfile: "config.yaml"


try:
    fc_config.validate(config)
except fc_config.ConfigError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)


rule laion_face_urls:
    input:
        unpack(lambda wildcards: fc_laion_ids.rule_inputs(config["laion_ids"])),
    output:
        summary=config["laion_ids"]["summary"],
    params:
        cfg=lambda wildcards: fc_laion_ids.rule_keys(config["laion_ids"])[0],
    conda:
        "../envs/facecaption.yaml"
    log:
        "logs/laion_face_urls.log",
    message:
        "laion_face_urls: LAION-Face IDs joined with LAION-400M metadata into {config[laion_ids][out]}"
    threads: 1
    resources:
        fc_runtime=fc_laion_ids.rule_keys(config["laion_ids"])[1],
        mem_mb=8000,  # 50M IDs: 400 MB sorted + a few GB while FaRL's .pth unpickles; streaming the parts is small
        runtime=240,  # minutes: 32 parts, ~413M rows (docs/LAION-FACE.md has the measured rate)
    shell:
        "facecaption laion-face-urls --cfg {params.cfg:q} --runtime {resources.fc_runtime:q} 2> {log}"
