"""Rules select_prompts and select_prompts_oracle: POLE's per-image choice of each class's
token, from the CAMs of a variant (baseline, or select_from), read from a released selection file
(prompts.source file), or, for the oracle variant (params mask_source gt), from the
ground-truth masks: the same selection with the object's true extent."""

from _common import candidates, clip_bundle, dataset, ids, run

from pole_core.io.atomic import write_json
from pole_core.prompts.from_file import selections_from_file
from pole_core.prompts.select import gt_masks, select_prompts, select_prompts_from_masks


def main(log):
    prompts_cfg = snakemake.params.prompts
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    cands = candidates(prompts_cfg, ds.bank)
    if snakemake.params.mask_source == "gt":
        selected, histogram = select_prompts_from_masks(
            ds,
            train_ids,
            gt_masks(ds),
            clip_bundle(snakemake),
            cands,
            template=prompts_cfg["template"],
            batch_size=prompts_cfg["batch_size"],
            preprocess=prompts_cfg["preprocess"],
            source_name="ground truth",
        )
        log.info("oracle: tokens selected on the ground-truth masks of %d images", len(selected))
    elif snakemake.params.from_file:  # prompts.source file, selection from baseline only
        if not prompts_cfg["file"]:
            raise ValueError("config: prompts.source is 'file' but prompts.file is not set")
        split = snakemake.params.split
        selected, histogram = selections_from_file(
            snakemake.input.file,
            ds,
            train_ids,
            ds.ids(split),
            cands,
            template=prompts_cfg["template"],
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
            template=prompts_cfg["template"],
            batch_size=prompts_cfg["batch_size"],
            preprocess=prompts_cfg["preprocess"],
        )
    write_json(snakemake.output.selected, selected)
    write_json(snakemake.output.histogram, histogram)
    log.info("selected tokens for %d images: %s", len(selected), histogram)


run(snakemake, main)
