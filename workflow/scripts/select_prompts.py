"""Rule select_prompts: POLE's per-image choice of each class's token, from the baseline CAMs
(prompts.source cam) or read from a released selection file (prompts.source file)."""

from _common import candidates, clip_bundle, dataset, ids, run

from pole_core.io.atomic import write_json
from pole_core.prompts.from_file import selections_from_file
from pole_core.prompts.select import select_prompts


def main(log):
    p = snakemake.params.prompts
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    cands = candidates(p, ds.bank)
    if p["source"] == "file":
        if not p["file"]:
            raise ValueError("config: prompts.source is 'file' but prompts.file is not set")
        split = snakemake.params.split
        selected, histogram = selections_from_file(
            snakemake.input.file,
            ds,
            train_ids,
            ds.ids(split),
            cands,
            template=p["template"],
            split=split,
        )
        log.info("read the selections of %d images from %s", len(selected), snakemake.input.file)
    else:
        selected, histogram = select_prompts(
            ds,
            train_ids,
            snakemake.input.cams,
            clip_bundle(snakemake),
            cands,
            template=p["template"],
            batch_size=p["batch_size"],
            preprocess=p["preprocess"],
        )
    write_json(snakemake.output.selected, selected)
    write_json(snakemake.output.histogram, histogram)
    log.info("selected tokens for %d images: %s", len(selected), histogram)


run(snakemake, main)
