"""Rule crf: one shard of CRF labels (confident fg/bg for the affinity net; CRF-refined CAMs for scoring)."""

from pathlib import Path

from _common import crf_params, dataset, ids, run, shard_of

from pole_core.io.atomic import read_json
from pole_core.refine.crf import ir_label_fn, refine_fn, write_labels


def main(log):
    crf_cfg = snakemake.params.crf
    params = crf_params(crf_cfg)
    ds = dataset(snakemake)
    out = Path(snakemake.output[0])
    train_ids = shard_of(snakemake, ids(ds, snakemake.params.split, snakemake.params.max_images))
    ir_label = ir_label_fn(
        fg_thresh=crf_cfg["fg_thresh"], bg_thresh=crf_cfg["bg_thresh"], params=params
    )
    stats = write_labels(ds, train_ids, snakemake.input.cams, out / "labels", ir_label)
    log.info("confident labels for %d images: %s", len(train_ids), stats)
    if snakemake.params.eval_split is None:  # no ground truth: nothing to score
        return
    eval_ids = shard_of(
        snakemake, ids(ds, snakemake.params.eval_split, snakemake.params.max_images)
    )
    eval_bg = crf_cfg["eval_bg_thresh"]
    if eval_bg is None:
        eval_bg = read_json(snakemake.input.cam_eval)["best_threshold"]
    refine = refine_fn(bg_thresh=eval_bg, params=params)
    stats = write_labels(ds, eval_ids, snakemake.input.cams, out / "refined", refine)
    log.info("CRF-refined CAMs (bg %.2f) for %d images: %s", eval_bg, len(eval_ids), stats)


run(snakemake, main)
