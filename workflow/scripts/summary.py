"""Rule summary: every stage's mIoU, wall time per rule and the prompt histogram in one table."""

from _common import run

from pole_core.report.summary import build_summary


def main(log):
    summary = build_summary(
        snakemake.params.eval_dir,
        snakemake.params.benchmarks_dir,
        snakemake.input.histogram,
        snakemake.output.json,
        snakemake.output.md,
        unscored=snakemake.params.unscored,
        variants=snakemake.params.variants,
    )
    log.info("summary: %s", summary["miou"])


run(snakemake, main)
