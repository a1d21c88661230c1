"""Rule extract_cams: one shard of the multi-scale CAMs, batched (scattered by Snakemake)."""

from _common import dataset, device, run, shard_of_splits

from pole_core.cam.extract import extract_cams
from pole_core.cam.train import load_cam_net
from pole_core.io.checkpoint import file_hash


def main(log):
    extract_cfg = snakemake.params.extract
    ds = dataset(snakemake)
    my_ids = shard_of_splits(snakemake, ds)
    dev = device(snakemake)
    net, _, _ = load_cam_net(snakemake.input.model, dev)
    stats = extract_cams(
        net,
        ds,
        my_ids,
        snakemake.output[0],
        scales=tuple(extract_cfg["scales"]),
        flip=extract_cfg["flip"],
        batch_size=extract_cfg["batch_size"],
        workers=extract_cfg["workers"],
        device=dev,
        attrs={
            "classes": list(ds.class_names),
            "scales": list(extract_cfg["scales"]),
            "flip": bool(extract_cfg["flip"]),
            "source": file_hash(snakemake.input.model),
        },
    )
    log.info("shard %s: %d images, %s", snakemake.wildcards.scatteritem, len(my_ids), stats)


run(snakemake, main)
