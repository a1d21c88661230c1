"""Rule random_walk: one shard of pseudo-masks, CAMs propagated over the predicted boundaries."""

from _common import boundary_features, crf_params, dataset, device, run, shard_of_splits

from pole_core.refine.affinity import load_affinity_net
from pole_core.refine.random_walk import run_random_walk_shard


def main(log):
    rw = snakemake.params.rw
    ds = dataset(snakemake)
    my_ids = shard_of_splits(snakemake, ds)
    dev = device(snakemake)
    features = boundary_features(
        snakemake.params.affinity_backbone, snakemake.input.backbone[0], dev
    )
    net = load_affinity_net(features, snakemake.input.affinity, map_location=dev)
    stats = run_random_walk_shard(
        ds,
        my_ids,
        snakemake.input.cams,
        net,
        snakemake.output[0],
        beta=rw["beta"],
        exp_times=rw["exp_times"],
        radius=rw["radius"],
        bg_thresh=rw["bg_thresh"],
        normalize=rw["normalize"],
        damp_boundary=rw["damp_boundary"],
        crf=crf_params(rw["final_crf"]) if rw["final_crf"]["enabled"] else None,
        device=dev,
    )
    log.info("shard %s: %d pseudo-masks, %s", snakemake.wildcards.scatteritem, len(my_ids), stats)


run(snakemake, main)
