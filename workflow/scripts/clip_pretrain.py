"""Rule clip_pretrain: contrastive pretraining of the mini-CLIP on the world's captions."""

from pathlib import Path

from _common import device, run

from pole_core.clip.mini import MiniClipParams, train_mini_clip


def main(log):
    pretrain = snakemake.params.pretrain
    params = MiniClipParams(
        epochs=pretrain["epochs"],
        batch_size=pretrain["batch_size"],
        lr=pretrain["lr"],
        weight_decay=pretrain["weight_decay"],
        warmup_steps=pretrain["warmup_steps"],
        grad_clip=pretrain["grad_clip"],
        seed=snakemake.params.seed,
    )
    stats = train_mini_clip(
        Path(snakemake.input.data) / "clip_corpus",
        snakemake.output[0],
        params,
        device=device(snakemake),
        model_cfg=snakemake.params.mini,
        log=log.info,
    )
    log.info("mini-CLIP trained: %s", stats)


run(snakemake, main)
