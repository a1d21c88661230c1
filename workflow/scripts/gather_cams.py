"""Rule gather_cams: the CAM shards into one HDF5 file (temp name, then rename)."""

from _common import run

from pole_core.io.cam_store import merge_cam_files


def main(log):
    merge_cam_files(list(snakemake.input), snakemake.output[0])
    log.info("gathered %d shards into %s", len(snakemake.input), snakemake.output[0])


run(snakemake, main)
