"""Rule train_cam: the CLIP-guided CAM network of one variant (names = CLIMS, selected = POLE)."""

from pathlib import Path

from _common import (
    augmented_items,
    bg_words,
    clip_bundle,
    dataset,
    ids,
    new_cam_net,
    run,
    stage_params,
    train_run,
)

from pole_core.cam.train import CamTrainParams, load_cam_net, train_cam
from pole_core.io.atomic import read_json


def main(log):
    cam = snakemake.params.cam
    variant = snakemake.params.variant
    ds = dataset(snakemake)
    bank = ds.bank
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    template = cam["template"]

    if variant["prompts"] in ("selected", "oracle"):  # oracle: the same file, chosen on GT masks
        selected = read_json(snakemake.input.prompts[0])
        missing = [i for i in train_ids if i not in selected]
        if missing:
            raise ValueError(f"{snakemake.input.prompts[0]}: no selection for image {missing[0]!r}")

        def token(image_id: str, k: int) -> str:
            return selected[image_id].get(bank.names[k], bank.prompts[k])
    else:

        def token(image_id: str, k: int) -> str:
            return bank.prompts[k]

    def prompts_for(index: int) -> dict[int, str]:
        image_id = train_ids[index]
        present = ds.labels(image_id).nonzero()[0]
        return {int(k): template.format(token(image_id, int(k))) for k in present}

    items = augmented_items(snakemake, ds, train_ids, cam)
    if snakemake.input.init:  # cam.init or cam.pretrain: start from the CAM classifier
        net = load_cam_net(snakemake.input.init[0])[0]
        log.info("starting from the CAM classifier %s", snakemake.input.init[0])
    else:
        net = new_cam_net(cam, ds.n_classes)
    net.set_freeze_bn(cam["freeze_bn"])
    log.info(
        "variant %s: %d images, prompts=%s, adapters=%s, weights=%s",
        snakemake.wildcards.variant,
        len(train_ids),
        variant["prompts"],
        variant["adapters"],
        variant["loss_weights"],
    )
    weights = dict(variant["loss_weights"])
    cls_weight = weights.pop("cls", 0.0)
    params = stage_params(
        CamTrainParams,
        cam,
        loss_weights=weights,
        adapters=variant["adapters"],
        adapter_lr=variant["adapter_lr"],
        clamp=tuple(cam["clamp"]),
        cls_weight=cls_weight,
        seed=snakemake.params.seed,
    )
    stats = train_cam(
        net,
        items,
        prompts_for,
        clip_bundle(snakemake),
        Path(snakemake.output[0]),
        params,
        bg_words=bg_words(cam, bank),
        run=train_run(snakemake, log, cam["workers"]),
    )
    log.info("trained: %s", stats)


run(snakemake, main)
