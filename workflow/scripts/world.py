"""Rule world: generate the demo world in VOC layout (whole folder appears atomically)."""

import os
import shutil
import tempfile
from pathlib import Path

from _common import run

from pole_core.data.world import generate_world
from pole_core.io.atomic import write_json


def main(log):
    out = Path(snakemake.output[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        w = snakemake.params.world
        summary = generate_world(
            tmp,
            n_train=w["n_train"],
            n_val=w["n_val"],
            n_clip=w["n_clip"],
            image_size=w["image_size"],
            seed=snakemake.params.seed,
            n_classes=w["n_classes"],
            min_pixels=w["min_pixels"],
            max_objects=w["max_objects"],
            name_rate=w["name_rate"] or None,
            polysemy=w["polysemy"] or None,
        )
        write_json(tmp / "world_summary.json", summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("world written to %s: %s", out, summary)


run(snakemake, main)
