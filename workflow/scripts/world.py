"""Rule world: generate the demo world in VOC layout (whole folder appears atomically)."""

from _common import run

from pole_core.demo.world import generate_world
from pole_core.io.atomic import atomic_dir, write_json


def main(log):
    w = snakemake.params.world
    with atomic_dir(snakemake.output[0]) as tmp:
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
    log.info("world written to %s: %s", snakemake.output[0], summary)


run(snakemake, main)
