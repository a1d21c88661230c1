"""Rule train_affinity: IRNet boundary network on the CRF labels, over a frozen backbone."""

from pathlib import Path

from _common import augmented_items, boundary_features, dataset, device, find_in_shards, ids, run

from pole_core.io.png import read_mask
from pole_core.refine.affinity import AffinityNet, train_affinity


def main(log):
    a = snakemake.params.affinity
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    label_path = find_in_shards(list(snakemake.input.shards), "labels")
    items = augmented_items(
        snakemake,
        ds,
        train_ids,
        a,
        mask_fn=lambda image_id: read_mask(label_path(image_id)),
        flip=True,
    )
    dev = device(snakemake)
    net = AffinityNet(
        boundary_features(a["backbone"], snakemake.input.backbone[0], dev),
        stride=a["stride"],
        context=a["context"],
        image_level=a["image_level"],
    )
    stats = train_affinity(
        net,
        items,
        Path(snakemake.output[0]),
        radius=a["radius"],
        epochs=a["epochs"],
        batch_size=a["batch_size"],
        lr=a["lr"],
        weight_decay=a["weight_decay"],
        momentum=a["momentum"],
        seed=snakemake.params.seed,
        device=dev,
        num_workers=a["workers"],
        log=log.info,
    )
    log.info("boundary network trained: %s", stats)


run(snakemake, main)
