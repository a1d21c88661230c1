"""Rule clip_pretrain: contrastive pretraining of the mini-CLIP on the world's captions."""

from pathlib import Path

from _common import device, run, stage_params

from pole_core.clip.mini import MiniClipParams, train_mini_clip


def main(log):
    pretrain = snakemake.params.pretrain
    params = stage_params(MiniClipParams, pretrain, seed=snakemake.params.seed)
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
