"""Rule clip_pretrain: contrastive pretraining of the mini-CLIP on the world's captions."""

from pathlib import Path

from _common import device, run

from pole_core.clip.mini import train_mini_clip


def main(log):
    p = snakemake.params.pretrain
    stats = train_mini_clip(
        Path(snakemake.input.data) / "clip_corpus",
        snakemake.output[0],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        lr=p["lr"],
        weight_decay=p["weight_decay"],
        warmup_steps=p["warmup_steps"],
        grad_clip=p["grad_clip"],
        seed=snakemake.params.seed,
        device=device(snakemake),
        model_cfg=snakemake.params.mini,
        log=log.info,
    )
    log.info("mini-CLIP trained: %s", stats)


run(snakemake, main)
