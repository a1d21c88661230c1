"""Rule eval_seg: segmenter predictions on the val split (palette PNGs) and their mIoU."""

from _common import crf_params, dataset, device, ids, run

from pole_core.io.atomic import atomic_dir, write_json
from pole_core.seg.infer import evaluate_dir, predict_dataset
from pole_core.seg.train import load_seg_net


def main(log):
    seg = snakemake.params.seg
    ds = dataset(snakemake)
    val_ids = ids(ds, snakemake.params.split, snakemake.params.max_images)
    dev = device(snakemake)
    net = load_seg_net(snakemake.input.model, dev)
    crf = crf_params(snakemake.params.crf) if seg["eval_crf"] else None
    with atomic_dir(snakemake.output.pred) as tmp:
        predict_dataset(
            net,
            ds,
            val_ids,
            tmp,
            scales=tuple(seg["eval_scales"]),
            flip=seg["eval_flip"],
            crf=crf,
            device=dev,
        )
        result = evaluate_dir(tmp, ds, val_ids)
    result["split"] = snakemake.params.split
    write_json(snakemake.output.score, result)
    log.info("segmenter on %s: mIoU %.2f", snakemake.params.split, result["miou"])


run(snakemake, main)
