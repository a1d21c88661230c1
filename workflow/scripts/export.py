"""Rule export: the pseudo-masks as a VOC-style tree and an mmsegmentation dataset."""

from _common import dataset, ids, run

from pole_core.io.atomic import write_json
from pole_core.refine.export import export_mmseg, export_voc


def main(log):
    ds = dataset(snakemake)
    train_ids = ids(ds, snakemake.params.train_split, snakemake.params.max_images)
    val_ids = ids(ds, snakemake.params.val_split, snakemake.params.max_images)
    voc = export_voc(snakemake.input.masks, ds, train_ids, val_ids, snakemake.output.voc)
    mmseg = export_mmseg(snakemake.input.masks, ds, train_ids, val_ids, snakemake.output.mmseg)
    write_json(
        snakemake.output.manifest,
        {
            "voc": str(snakemake.output.voc),
            "mmseg": str(snakemake.output.mmseg),
            "n_train": len(train_ids),
            "n_val": len(val_ids),
            "classes": list(ds.class_names),
            "details": {"voc": voc, "mmseg": mmseg},
        },
    )
    log.info("exported %d train / %d val images", len(train_ids), len(val_ids))


run(snakemake, main)
