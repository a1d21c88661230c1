"""The smoke DAG on a COCO-format copy of the smoke world (data.source: coco)."""

from __future__ import annotations

import json

import numpy as np
from coco_fixture import make_coco_from_world
from workflow_utils import snakemake

from pole_core.data.coco import CocoDataset
from pole_core.io.png import read_mask


def test_smoke_dag_runs_on_coco(smoke_run, tmp_path):
    coco = tmp_path / "coco"
    ids = make_coco_from_world(smoke_run / "results_smoke" / "data", coco)
    clip = smoke_run / "results_smoke" / "clip" / "model.pt"
    work = tmp_path / "work"
    snakemake(
        work,
        "--config",
        f"data={{source: coco, root: {coco}, train_split: train2014, eval_split: train2014, "
        "val_split: val2014}",
        f"clip={{checkpoint: {clip}}}",
        "results_dir=results_coco",
    )
    r = work / "results_coco"
    ds = CocoDataset(coco)
    for variant in ("baseline", "pole"):
        masks = sorted((r / "pseudo_masks" / variant).glob("*.png"))
        assert [p.stem for p in masks] == sorted(ids["train2014"])
        mask = read_mask(masks[0])
        assert mask.shape == ds.image_size(masks[0].stem)
        assert set(np.unique(mask)) <= {0, 255} | set(np.flatnonzero(ds.labels(masks[0].stem)) + 1)
        score = json.loads((r / "eval" / f"pseudo_{variant}.json").read_text())
        assert 0 <= score["miou"] <= 100 and score["n_images"] == len(ids["train2014"])
    seg = json.loads((r / "eval" / "seg_val.json").read_text())
    assert seg["n_images"] == len(ids["val2014"])
    # the ground truth was decoded once and cached as PNGs
    assert sorted(p.stem for p in (r / "gt" / "SegmentationClass").glob("*.png")) == sorted(
        set(ids["train2014"]) | set(ids["val2014"])
    )
