"""Rule pseudo_masks: the random-walk shards into one folder of palette PNGs (appears atomically)."""

import os
import shutil
import tempfile
from pathlib import Path

from _common import run


def main(log):
    out = Path(snakemake.output[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    n = 0
    try:
        for shard in snakemake.input.shards:
            for png in sorted(Path(shard).glob("*.png")):
                target = tmp / png.name
                try:
                    os.link(png, target)
                except OSError:
                    shutil.copy2(png, target)
                n += 1
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%d pseudo-masks in %s", n, out)


run(snakemake, main)
