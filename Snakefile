# POLE pseudo-label pipeline: image-level labels -> pixel pseudo-masks -> segmenter.
# Table of contents only; each stage is one file in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


# No `configfile:` here: common.smk applies the demo config.yaml only when no --configfile
# is given, so a real-data config never inherits demo values.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/clip.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/seg.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
