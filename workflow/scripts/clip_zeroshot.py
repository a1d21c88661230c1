"""Rule clip_zeroshot: does the world have the property POLE exploits? Names vs synonyms, zero-shot."""

import numpy as np
from _common import clip_bundle, dataset, ids, run

from pole_core.clip.zeroshot import zeroshot_eval
from pole_core.io.atomic import write_json


def main(log):
    ds = dataset(snakemake)
    bank = ds.bank
    val = ids(ds, snakemake.params.split, snakemake.params.max_images)
    bundle = clip_bundle(snakemake)
    labels = np.stack([ds.labels(i) for i in val])
    result = zeroshot_eval(
        bundle,
        [ds.image(i) for i in val],
        labels,
        bank.prompts,
        {p: bank.synonyms[n] for n, p in zip(bank.names, bank.prompts, strict=True)},
        template=snakemake.params.clip["zeroshot_template"],
    )
    result["split"] = snakemake.params.split
    result["n_images"] = len(val)
    write_json(snakemake.output[0], result)
    log.info("zero-shot: %s", {k: v for k, v in result.items() if not isinstance(v, dict | list)})


run(snakemake, main)
