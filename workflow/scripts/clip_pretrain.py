"""Rule clip_pretrain: contrastive pretraining of the mini-CLIP on the world's captions."""

from pathlib import Path

from _common import run, stage_params, train_run

from pole_core.clip.mini import MiniClipParams, train_mini_clip


def main(log):
    pretrain = snakemake.params.pretrain
    params = stage_params(MiniClipParams, pretrain, seed=snakemake.params.seed)
    stats = train_mini_clip(
        Path(snakemake.input.data) / "clip_corpus",
        snakemake.output[0],
        params,
        run=train_run(snakemake, log),
        model_cfg=snakemake.params.mini,
    )
    log.info("mini-CLIP trained: %s", stats)


run(snakemake, main)
