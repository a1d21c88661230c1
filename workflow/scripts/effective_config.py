"""Rule effective_config: write the config this run used, so a result can be traced to it."""

import yaml
from _common import run

from pole_core.io.atomic import atomic_path


def main(log):
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(yaml.safe_dump(dict(snakemake.params.config), sort_keys=False))
    log.info("wrote %s", snakemake.output[0])


run(snakemake, main)
