"""Rule train_affinity: IRNet boundary network on the CRF labels, over a frozen backbone."""

from pathlib import Path

from _common import (
    augmented_items,
    boundary_features,
    dataset,
    device,
    find_in_shards,
    ids,
    run,
    stage_params,
    train_run,
)

from pole_core.io.png import read_mask
from pole_core.refine.affinity import AffinityTrainParams, BoundaryNet, train_affinity


def main(log):
    affinity = snakemake.params.affinity
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    label_path = find_in_shards(list(snakemake.input.shards), "labels")
    items = augmented_items(
        snakemake,
        ds,
        train_ids,
        affinity,
        mask_fn=lambda image_id: read_mask(label_path(image_id)),
        flip=True,
    )
    dev = device(snakemake)
    net = BoundaryNet(
        boundary_features(affinity["backbone"], snakemake.input.backbone[0], dev),
        stride=affinity["stride"],
        context=affinity["context"],
        image_level=affinity["image_level"],
    )
    params = stage_params(AffinityTrainParams, affinity, seed=snakemake.params.seed)
    out = Path(snakemake.output[0])
    stats = train_affinity(net, items, out, params, train_run(snakemake, log, affinity["workers"]))
    log.info("boundary network trained: %s", stats)


run(snakemake, main)
