"""Rule eval_pseudo: mIoU of the pseudo-masks on the eval split."""

from pathlib import Path

from _common import dataset, ids, run

from pole_core.io.atomic import write_json
from pole_core.io.png import read_mask
from pole_core.metrics import score


def main(log):
    ds = dataset(snakemake)
    eval_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    masks = Path(snakemake.input.masks)
    result = score(((ds.mask(i), read_mask(masks / f"{i}.png")) for i in eval_ids), ds.class_names)
    result["split"] = snakemake.params.split
    write_json(snakemake.output[0], result)
    log.info("pseudo-masks %s: mIoU %.2f", snakemake.wildcards.variant, result["miou"])


run(snakemake, main)
