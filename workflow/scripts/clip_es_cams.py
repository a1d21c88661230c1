"""Rule clip_es_cams: one shard of a clip_es variant's training-free CAMs (scattered by Snakemake)."""

from _common import clip_bundle, dataset, run, shard_of_splits

from pole_core.cam.clip_es_store import extract_clip_es_cams, resolve_text, selected_prompts
from pole_core.io.atomic import read_json
from pole_core.io.checkpoint import file_hash


def main(log):
    clip_es_cfg = snakemake.params.clip_es
    ds = dataset(snakemake)
    my_ids = shard_of_splits(snakemake, ds)
    bank = ds.bank
    text = resolve_text(
        bank.names,
        bank.prompts,
        bank.bg_words,
        class_prompts=clip_es_cfg["class_prompts"],
        bg_prompts=clip_es_cfg["bg_prompts"],
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
        clip_es_cfg["template"],
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
        template=clip_es_cfg["template"],
        image_prompts=image_prompts,
        scales=tuple(clip_es_cfg["scales"]),
        flip=clip_es_cfg["flip"],
        use_caa=clip_es_cfg["caa"],
        box_threshold=clip_es_cfg["box_threshold"],
        attn_layers=clip_es_cfg["attn_layers"],
        sinkhorn_iters=clip_es_cfg["sinkhorn_iters"],
        affinity_power=clip_es_cfg["affinity_power"],
        pooling=clip_es_cfg["pooling"],
        attrs={
            "source": file_hash(snakemake.input.clip[0]) if snakemake.input.clip else bundle.name
        },
        log=log.info,
    )
    log.info("shard %s: %s", snakemake.wildcards.scatteritem, stats)


run(snakemake, main)
