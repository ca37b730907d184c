# facecaption: regenerate the FaceCaption-15M paper.  `snakemake --cores all`
# Overlays for real runs: `snakemake --cores all --configfile config/laion-face.yaml`
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/collect.smk"
include: "rules/faces.smk"
include: "rules/attributes.smk"
include: "rules/captions.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/audit.smk"
include: "rules/ablation.smk"
include: "rules/quality.smk"
include: "rules/paper.smk"


localrules:
    all,


rule all:
    input:
        "paper/build/paper.pdf",
    default_target: True
