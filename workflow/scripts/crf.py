"""Rule crf: one shard of CRF labels (confident fg/bg for the affinity net; CRF-refined CAMs for scoring)."""

from pathlib import Path

from _common import dataset, ids, run, shard_index

from pole_core.cam.extract import shard_ids
from pole_core.io.atomic import read_json
from pole_core.refine.crf import run_crf_shard


def main(log):
    c = dict(snakemake.params.crf)
    ds = dataset(snakemake)
    shard, n = shard_index(snakemake.wildcards.scatteritem)
    out = Path(snakemake.output[0])
    train_ids = shard_ids(ids(ds, snakemake.params.split, snakemake.params.max_images), n, shard)
    eval_bg = c.pop("eval_bg_thresh")
    c.pop("shards")
    stats = run_crf_shard(ds, train_ids, snakemake.input.cams, out / "labels", mode="ir_label", **c)
    log.info("confident labels for %d images: %s", len(train_ids), stats)
    if snakemake.params.eval_split is None:  # no ground truth: nothing to score
        return
    eval_ids = shard_ids(
        ids(ds, snakemake.params.eval_split, snakemake.params.max_images), n, shard
    )
    if eval_bg is None:
        eval_bg = read_json(snakemake.input.cam_eval)["best_threshold"]
    stats = run_crf_shard(
        ds,
        eval_ids,
        snakemake.input.cams,
        out / "refined",
        mode="refine",
        cam_bg_thresh=eval_bg,
        **c,
    )
    log.info("CRF-refined CAMs (bg %.2f) for %d images: %s", eval_bg, len(eval_ids), stats)


run(snakemake, main)
