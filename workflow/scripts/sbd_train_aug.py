"""Rule sbd_train_aug: SBD's cls/*.mat -> SegmentationClassAug PNGs, train_aug.txt, cls_labels.npy."""

from _common import run

from pole_core.data.sbd import build_train_aug


def main(log):
    build_train_aug(
        snakemake.params.voc_root,
        snakemake.params.sbd_root,
        snakemake.output[0],
        log=log,
    )


run(snakemake, main)
