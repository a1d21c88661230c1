"""Rule pretrain_cam: the plain CAM classifier both variants start from (demo stand-in for ImageNet)."""

from pathlib import Path

from _common import dataset, device, ids, run

from pole_core.cam.network import build_cam_net
from pole_core.cam.pretrain import pretrain_cam_classifier
from pole_core.data.transforms import AugmentedDataset


def main(log):
    cam = snakemake.params.cam
    pre = cam["pretrain"]
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    items = AugmentedDataset(
        ds,
        train_ids,
        resize_long=tuple(cam["resize_long"]),
        crop_size=cam["crop_size"],
        flip=cam["flip"],
        seed=snakemake.params.seed,
    )
    net = build_cam_net(
        cam["backbone"],
        ds.n_classes,
        strides=tuple(cam["strides"]),
        widths=tuple(cam["widths"]),
        weights=cam["weights"],
    )
    stats = pretrain_cam_classifier(
        net,
        items,
        Path(snakemake.output[0]),
        epochs=pre["epochs"],
        batch_size=pre["batch_size"],
        lr=pre["lr"],
        head_lr=pre["head_lr"],
        weight_decay=cam["weight_decay"],
        seed=snakemake.params.seed,
        device=device(snakemake),
        workers=cam["workers"],
        log=log.info,
    )
    log.info("CAM classifier: %s", stats["epochs"][-1] if stats["epochs"] else stats)


run(snakemake, main)
