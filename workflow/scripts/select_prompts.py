"""Rule select_prompts: POLE's per-image choice of each class's token from the baseline CAMs."""

from _common import candidates, clip_bundle, dataset, ids, run

from pole_core.io.atomic import write_json
from pole_core.prompts.select import select_prompts


def main(log):
    p = snakemake.params.prompts
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    cands = candidates(p, ds.root)
    selected, histogram = select_prompts(
        ds,
        train_ids,
        snakemake.input.cams,
        clip_bundle(snakemake),
        cands,
        template=p["template"],
        batch_size=p["batch_size"],
    )
    write_json(snakemake.output.selected, selected)
    write_json(snakemake.output.histogram, histogram)
    log.info("selected tokens for %d images: %s", len(selected), histogram)


run(snakemake, main)
