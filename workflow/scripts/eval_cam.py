"""Rule eval_cam: CAM mIoU on the eval split over a sweep of background thresholds."""

from _common import dataset, ids, run

from pole_core.cam.evaluate import eval_cams
from pole_core.io.atomic import write_json


def main(log):
    ds = dataset(snakemake)
    eval_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    result = eval_cams(snakemake.input.cams, ds, eval_ids, snakemake.params.thresholds)
    result["split"] = snakemake.params.split
    write_json(snakemake.output[0], result)
    log.info(
        "CAM %s: mIoU %.2f at threshold %s",
        snakemake.wildcards.variant,
        result["miou"],
        result["best_threshold"],
    )


run(snakemake, main)
