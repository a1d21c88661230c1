"""Rule figures: overlay grid (image, GT, CAMs, pseudo-mask, prediction), threshold curves, prompt histogram."""

from pathlib import Path

import numpy as np
from _common import dataset, ids, run

from pole_core.io.atomic import read_json
from pole_core.io.cam_store import open_cams, read_cam
from pole_core.io.png import read_mask
from pole_core.report.figures import overlay_grid, prompt_histogram, threshold_curve
from pole_core.seg.infer import predict
from pole_core.seg.train import load_seg_net


def main(log):
    params = snakemake.params
    ds = dataset(snakemake)
    shown = ids(ds, params.split, params.max_images)[: params.n_images]
    cams = {
        v: open_cams(path) for v, path in zip(params.variants, snakemake.input.cams, strict=True)
    }
    seg = load_seg_net(snakemake.input.seg_model, "cpu")
    masks = Path(snakemake.input.masks)

    def cam_column(variant):
        def heat(image_id):
            cam, _ = read_cam(cams[variant], image_id)
            return cam if len(cam) else np.zeros((1, *ds.image_size(image_id)), np.float32)

        return heat

    columns = {"ground truth": ds.mask}
    for v in params.variants:
        columns[f"{v} CAM"] = cam_column(v)
    columns[f"{params.seg_variant} pseudo-mask"] = lambda i: read_mask(masks / f"{i}.png")
    columns["segmenter"] = lambda i: predict(seg, ds.image(i)).argmax(0).astype(np.uint8)
    overlay_grid(ds, shown, columns, snakemake.output.overlays, n=params.n_images)
    curves = {
        v: read_json(path)["curve"]
        for v, path in zip(params.variants, snakemake.input.evals, strict=True)
    }
    threshold_curve(curves, snakemake.output.curve)
    bank = ds.bank
    prompt_histogram(
        read_json(snakemake.input.histogram),
        snakemake.output.histogram,
        dict(zip(bank.names, bank.prompts, strict=True)),
    )
    for f in cams.values():
        f.close()
    log.info("figures written for %d images", len(shown))


run(snakemake, main)
