"""Rule world: generate the demo world in VOC layout (whole folder appears atomically)."""

from _common import run

from pole_core.demo.world import generate_world
from pole_core.io.atomic import atomic_dir, write_json


def main(log):
    world_cfg = snakemake.params.world
    with atomic_dir(snakemake.output[0]) as tmp:
        summary = generate_world(
            tmp,
            n_train=world_cfg["n_train"],
            n_val=world_cfg["n_val"],
            n_clip=world_cfg["n_clip"],
            image_size=world_cfg["image_size"],
            seed=snakemake.params.seed,
            n_classes=world_cfg["n_classes"],
            min_pixels=world_cfg["min_pixels"],
            max_objects=world_cfg["max_objects"],
            name_rate=world_cfg["name_rate"] or None,
            polysemy=world_cfg["polysemy"] or None,
            cooccurrence=world_cfg["cooccurrence"] or None,
        )
        write_json(tmp / "world_summary.json", summary)
    log.info("world written to %s: %s", snakemake.output[0], summary)


run(snakemake, main)
