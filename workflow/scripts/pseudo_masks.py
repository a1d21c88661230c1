"""Rule pseudo_masks: the random-walk shards into one folder of palette PNGs (appears atomically)."""

import os
import shutil
from pathlib import Path

from _common import run

from pole_core.io.atomic import atomic_dir


def main(log):
    n = 0
    with atomic_dir(snakemake.output[0]) as tmp:
        for shard in snakemake.input.shards:
            for png in sorted(Path(shard).glob("*.png")):
                target = tmp / png.name
                try:
                    os.link(png, target)
                except OSError:
                    shutil.copy2(png, target)
                n += 1
    log.info("%d pseudo-masks in %s", n, snakemake.output[0])


run(snakemake, main)
