"""Rule clip_zeroshot: does the world have the property POLE exploits? Names vs synonyms,
zero-shot, and the world probe (which token CLIP reads as the object, on ground-truth and
CAM-like masks), written as a `probe` section and as probe.md."""

import numpy as np
from _common import clip_bundle, dataset, ids, run

from pole_core.clip.zeroshot import probe_markdown, world_probe, zeroshot_eval
from pole_core.io.atomic import write_json, write_text


def main(log):
    ds = dataset(snakemake)
    bank = ds.bank
    val = ids(ds, snakemake.params.split, snakemake.params.max_images)
    bundle = clip_bundle(snakemake)
    labels = np.stack([ds.labels(i) for i in val])
    images = [ds.image(i) for i in val]
    synonyms = {p: bank.synonyms[n] for n, p in zip(bank.names, bank.prompts, strict=True)}
    template = snakemake.params.clip["zeroshot_template"]
    result = zeroshot_eval(bundle, images, labels, bank.prompts, synonyms, template=template)
    result["split"] = snakemake.params.split
    result["n_images"] = len(val)

    probe_cfg = snakemake.params.probe
    if not snakemake.params.ground_truth:
        probe = {"skipped": "the dataset has no ground-truth masks"}
    elif probe_cfg["images"] == 0:
        probe = {"skipped": "eval.probe.images is 0"}
    else:
        probe = world_probe(
            bundle,
            images,
            lambda j: ds.mask(val[j]),
            labels,
            bank.prompts,
            synonyms,
            template=template,
            class_names=bank.names,
            max_images=probe_cfg["images"],
            blur=probe_cfg["blur"],
            dilate=probe_cfg["dilate"],
        )
        probe["split"] = snakemake.params.split
        log.info("probe: name - best synonym %s", probe["mean_name_minus_best_synonym"])
    result["probe"] = probe
    write_json(snakemake.output.json, result)
    write_text(snakemake.output.probe, probe_markdown(probe))
    log.info("zero-shot: %s", {k: v for k, v in result.items() if not isinstance(v, dict | list)})


run(snakemake, main)
