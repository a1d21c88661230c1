"""Rule train_seg: the segmentation network on one variant's pseudo-masks (255 ignored)."""

from pathlib import Path

from _common import augmented_items, dataset, ids, run, stage_params, train_run

from pole_core.io.png import read_mask
from pole_core.seg.network import build_seg_net
from pole_core.seg.train import SegTrainParams, train_seg


def main(log):
    seg = snakemake.params.seg
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    masks = Path(snakemake.input.masks)
    missing = [i for i in train_ids if not (masks / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{masks / missing[0]}.png: pseudo-mask missing")
    items = augmented_items(
        snakemake, ds, train_ids, seg, mask_fn=lambda image_id: read_mask(masks / f"{image_id}.png")
    )
    net = build_seg_net(
        seg["backbone"], ds.n_classes + 1, weights=seg["weights"], widths=tuple(seg["widths"])
    )
    params = stage_params(SegTrainParams, seg, seed=snakemake.params.seed)
    out = Path(snakemake.output[0])
    stats = train_seg(net, items, out, params, train_run(snakemake, log, seg["workers"]))
    log.info("segmenter trained on %d pseudo-masks: %s", len(train_ids), stats)


run(snakemake, main)
