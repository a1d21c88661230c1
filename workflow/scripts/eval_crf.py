"""Rule eval_crf: mIoU of the CRF-refined CAMs on the eval split."""

from _common import dataset, find_in_shards, ids, run

from pole_core.io.atomic import write_json
from pole_core.io.png import read_mask
from pole_core.metrics import score


def main(log):
    ds = dataset(snakemake)
    eval_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    path = find_in_shards(list(snakemake.input.shards), "refined")
    result = score(((ds.mask(i), read_mask(path(i))) for i in eval_ids), ds.class_names)
    result["split"] = snakemake.params.split
    write_json(snakemake.output[0], result)
    log.info("CRF %s: mIoU %.2f", snakemake.wildcards.variant, result["miou"])


run(snakemake, main)
