"""Rule clip_es_cams: one shard of a clip_es variant's training-free CAMs (scattered by Snakemake)."""

from _common import clip_bundle, dataset, run, shard_index, union_ids

from pole_core.cam.clip_es_store import extract_clip_es_cams, resolve_text, selected_prompts
from pole_core.cam.extract import shard_ids
from pole_core.io.atomic import read_json
from pole_core.io.checkpoint import file_hash


def main(log):
    c = snakemake.params.clip_es
    ds = dataset(snakemake)
    shard, n = shard_index(snakemake.wildcards.scatteritem)
    my_ids = shard_ids(
        union_ids(ds, snakemake.params.splits, snakemake.params.max_images), n, shard
    )
    bank = ds.bank
    text = resolve_text(
        bank.names,
        bank.prompts,
        bank.bg_words,
        class_prompts=c["class_prompts"],
        bg_prompts=c["bg_prompts"],
    )
    image_prompts = None
    if snakemake.input.prompts:  # prompts selected (POLE) or oracle: per-image tokens
        image_prompts = selected_prompts(
            read_json(snakemake.input.prompts[0]), bank.names, bank.prompts, text.class_prompts
        )
    bundle = clip_bundle(snakemake)
    log.info(
        "variant %s: %d images, prompts=%s (%s words), template %r, %d background words",
        snakemake.wildcards.variant,
        len(my_ids),
        snakemake.params.prompts,
        text.origin,
        c["template"],
        len(text.bg_prompts),
    )
    stats = extract_clip_es_cams(
        bundle.model,
        bundle.tokenizer,
        ds,
        my_ids,
        snakemake.output[0],
        mean=bundle.mean,
        std=bundle.std,
        text=text,
        template=c["template"],
        image_prompts=image_prompts,
        scales=tuple(c["scales"]),
        flip=c["flip"],
        use_caa=c["caa"],
        box_threshold=c["box_threshold"],
        attn_layers=c["attn_layers"],
        sinkhorn_iters=c["sinkhorn_iters"],
        affinity_power=c["affinity_power"],
        pooling=c["pooling"],
        attrs={
            "source": file_hash(snakemake.input.clip[0]) if snakemake.input.clip else bundle.name
        },
        log=log.info,
    )
    log.info("shard %s: %s", snakemake.wildcards.scatteritem, stats)


run(snakemake, main)
