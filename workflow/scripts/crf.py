"""Rule crf: one shard of CRF labels (confident fg/bg for the affinity net; CRF-refined CAMs for scoring)."""

from pathlib import Path

from _common import crf_params, dataset, ids, run, shard_index

from pole_core.cam.extract import shard_ids
from pole_core.io.atomic import read_json
from pole_core.refine.crf import write_ir_labels, write_refined_cams


def main(log):
    crf_cfg = snakemake.params.crf
    params = crf_params(crf_cfg)
    ds = dataset(snakemake)
    shard, n = shard_index(snakemake.wildcards.scatteritem)
    out = Path(snakemake.output[0])
    train_ids = shard_ids(ids(ds, snakemake.params.split, snakemake.params.max_images), n, shard)
    stats = write_ir_labels(
        ds,
        train_ids,
        snakemake.input.cams,
        out / "labels",
        fg_thresh=crf_cfg["fg_thresh"],
        bg_thresh=crf_cfg["bg_thresh"],
        params=params,
    )
    log.info("confident labels for %d images: %s", len(train_ids), stats)
    if snakemake.params.eval_split is None:  # no ground truth: nothing to score
        return
    eval_ids = shard_ids(
        ids(ds, snakemake.params.eval_split, snakemake.params.max_images), n, shard
    )
    eval_bg = crf_cfg["eval_bg_thresh"]
    if eval_bg is None:
        eval_bg = read_json(snakemake.input.cam_eval)["best_threshold"]
    stats = write_refined_cams(
        ds, eval_ids, snakemake.input.cams, out / "refined", bg_thresh=eval_bg, params=params
    )
    log.info("CRF-refined CAMs (bg %.2f) for %d images: %s", eval_bg, len(eval_ids), stats)


run(snakemake, main)
