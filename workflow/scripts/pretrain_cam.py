"""Rule pretrain_cam: the plain CAM classifier both variants start from (IRNet step 1)."""

from pathlib import Path

from _common import augmented_items, dataset, ids, new_cam_net, run, stage_params, train_run

from pole_core.cam.pretrain import PretrainParams, pretrain_cam_classifier


def main(log):
    cam = snakemake.params.cam
    pretrain = cam["pretrain"]
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    items = augmented_items(snakemake, ds, train_ids, cam)
    net = new_cam_net(cam, ds.n_classes)
    net.set_freeze_bn(pretrain["freeze_bn"])
    net.freeze_stages(pretrain["frozen_stages"])
    params = stage_params(
        PretrainParams,
        pretrain,
        weight_decay=cam["weight_decay"],
        momentum=cam["momentum"],
        seed=snakemake.params.seed,
    )
    out = Path(snakemake.output[0])
    stats = pretrain_cam_classifier(
        net, items, out, params, train_run(snakemake, log, cam["workers"])
    )
    log.info("CAM classifier: %s", stats["epochs"][-1] if stats["epochs"] else stats)


run(snakemake, main)
