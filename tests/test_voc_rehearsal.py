"""The VOC-size rehearsal: config/voc.yaml as a user runs it, on a generated VOCdevkit.

Real VOC image sizes (500x375 / 375x500), SBD .mat files, a two-column train_aug.txt,
ResNet-50/101 and an OpenAI-layout ViT-B/32 at random init in the files config/voc.yaml
names. Only sizes are overridden (epochs, batch sizes, shard counts) plus device=cpu.
It checks that the effective config is the schema defaults + voc.yaml + those overrides
and nothing else, and the shape, dtype and value range of every contract output.
Run by `make test-voc` (about 10 minutes on 2 cores); writes per-rule measurements to
<workdir>/rehearsal.json (docs/SCALING.md).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from rehearsal.vocdevkit import make_vocdevkit, make_weights
from snakemake.utils import update_config
from workflow_utils import REPO, snakemake

from pole_core.config import config_diff, paper_defaults, validate_config
from pole_core.data.voc import VOC_CLASSES, VOCDataset
from pole_core.io.png import read_mask

pytestmark = pytest.mark.voc

# What a user on a small machine would shrink; everything else comes from voc.yaml.
OVERRIDES = {
    "device": os.environ.get("POLE_REHEARSAL_DEVICE", "cpu"),  # benchmarks/gpu.sh: cuda
    "cam": {
        "epochs": 1,
        "batch_size": 4,
        "pretrain": {"epochs": 1, "batch_size": 4},
        # the schema's two variants, plus the training-free CLIP-ES source on the ViT-B/32
        "variants": {
            "baseline": {
                "prompts": "names",
                "adapters": False,
                "loss_weights": {"otm": 10, "btm": 24, "cbs": 1, "reg": 0.2},
            },
            "pole": {"prompts": "selected"},
            "clip_es": {"source": "clip_es", "prompts": "names"},
        },
    },
    "extract": {"shards": 2, "batch_size": 2},
    "crf": {"shards": 2},
    "affinity": {"epochs": 1, "batch_size": 4},
    "random_walk": {"shards": 2},
    "seg": {"epochs": 1, "batch_size": 2},
}
N_TRAIN, N_VAL, N_SBD = 6, 3, 6
VARIANTS = ("baseline", "pole", "clip_es")


def _config_args(overrides: dict) -> list[str]:
    """--config key=value pairs as a user types them (nested groups in flow YAML)."""
    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
        if isinstance(v, dict)
        else f"{k}={v}"
        for k, v in overrides.items()
    ]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    keep = os.environ.get("POLE_REHEARSAL_KEEP")  # benchmarks/gpu.sh reuses the generated data
    work = Path(keep) if keep else tmp_path_factory.mktemp("voc_rehearsal")
    work.mkdir(parents=True, exist_ok=True)
    splits = make_vocdevkit(work / "data", n_train=N_TRAIN, n_val=N_VAL, n_sbd=N_SBD)
    make_weights(work / "data" / "weights")
    start = time.monotonic()
    snakemake(
        work, "--config", *_config_args(OVERRIDES), configfile="config/voc.yaml", timeout=1800
    )
    wall = time.monotonic() - start
    return {"work": work, "results": work / "results_voc", "splits": splits, "wall_s": wall}


def test_effective_config_is_defaults_plus_voc_yaml_plus_overrides(rehearsal):
    expected = paper_defaults()
    update_config(expected, yaml.safe_load((REPO / "config" / "voc.yaml").read_text()))
    update_config(expected, OVERRIDES)
    validate_config(expected)
    used = yaml.safe_load((rehearsal["results"] / "config.yaml").read_text())
    assert config_diff(expected, used) == {}


def test_cam_stores_follow_the_contract(rehearsal):
    ds = VOCDataset(rehearsal["work"] / "data" / "VOCdevkit" / "VOC2012")
    ids = sorted(set(rehearsal["splits"]["train_aug"]) | set(rehearsal["splits"]["train"]))
    for variant in VARIANTS:
        with h5py.File(rehearsal["results"] / "cams" / f"{variant}.h5", "r") as f:
            assert sorted(f.keys()) == ids
            for img_id in ids:
                h, w = ds.image_size(img_id)
                cam, keys = f[img_id]["cam"], f[img_id]["keys"][()]
                assert cam.dtype == np.float16 and cam.shape == (len(keys), h, w)
                assert f[img_id]["cam_s4"].shape == (len(keys), -(-h // 4), -(-w // 4))
                np.testing.assert_array_equal(keys, np.flatnonzero(ds.labels(img_id)))
                values = cam[()].astype(np.float32)
                assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1.001


def test_pseudo_masks_and_export_follow_the_contract(rehearsal):
    r = rehearsal["results"]
    ds = VOCDataset(rehearsal["work"] / "data" / "VOCdevkit" / "VOC2012")
    for variant in VARIANTS:
        pngs = sorted((r / "pseudo_masks" / variant).glob("*.png"))
        assert {p.stem for p in pngs} >= set(rehearsal["splits"]["train_aug"])
        for p in pngs:
            mask = read_mask(p)
            assert mask.dtype == np.uint8 and mask.shape == ds.image_size(p.stem)
            allowed = set(np.flatnonzero(ds.labels(p.stem)) + 1) | {0, 255}
            assert set(np.unique(mask)) <= allowed
    manifest = json.loads((r / "export" / "manifest.json").read_text())
    assert manifest


def test_scores_selection_and_models_exist(rehearsal):
    r = rehearsal["results"]
    stages = [f"{s}_{v}" for v in ("baseline", "pole", "clip_es") for s in ("cam", "pseudo")]
    for stage in [*stages, "crf_pole"]:
        score = json.loads((r / "eval" / f"{stage}.json").read_text())
        assert 0 <= score["miou"] <= 100 and score["n_images"] == N_TRAIN, stage
    seg = json.loads((r / "eval" / "seg_val.json").read_text())
    assert 0 <= seg["miou"] <= 100 and seg["n_images"] == N_VAL
    selected = json.loads((r / "prompts" / "selected.json").read_text())
    assert set(selected) == set(rehearsal["splits"]["train_aug"])
    assert all(set(t) <= set(VOC_CLASSES) for t in selected.values())
    for path in (
        "cam_net/init.pt",
        "cam_net/pole/model.pt",
        "affinity/pole/model.pt",
        "seg/model.pt",
    ):
        assert (r / path).stat().st_size > 0, path


def test_sbd_masks_were_converted(rehearsal):
    from pole_core.data.sbd import read_sbd_mat

    sbd = rehearsal["work"] / "data" / "benchmark_RELEASE" / "dataset" / "cls"
    aug = rehearsal["results"] / "sbd" / "SegmentationClassAug"
    for img_id in rehearsal["splits"]["sbd"]:
        np.testing.assert_array_equal(
            read_mask(aug / f"{img_id}.png"), read_sbd_mat(sbd / f"{img_id}.mat")
        )


def test_write_measurements(rehearsal):
    """Per rule: seconds, peak RSS, images, output bytes (docs/SCALING.md reads this file)."""
    work = rehearsal["work"]
    bench = rehearsal["results"] / "benchmarks"  # the rules' benchmark: files
    rows = {}
    for tsv in sorted(bench.rglob("*.tsv")):
        with tsv.open() as f:
            rec = next(csv.DictReader(f, delimiter="\t"))
        rule = tsv.relative_to(bench).parts[0].removesuffix(".tsv")
        row = rows.setdefault(rule, {"jobs": 0, "s": 0.0, "max_rss_mb": 0.0})
        row["jobs"] += 1
        row["s"] += float(rec["s"])
        rss = rec.get("max_rss", "NA")
        if rss not in ("NA", "-", ""):
            row["max_rss_mb"] = max(row["max_rss_mb"], float(rss))
    sizes = {}
    for sub in ("cams", "crf", "rw", "pseudo_masks", "sbd", "cam_net", "affinity", "seg"):
        folder = rehearsal["results"] / sub
        sizes[sub] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    # CLIP-ES at VOC sizes: seconds per image over its shards (every train_aug + train image
    # once), and the peak RSS of one shard job
    n_cam_images = len(set(rehearsal["splits"]["train_aug"]) | set(rehearsal["splits"]["train"]))
    clip_es = rows["clip_es_cams"]
    clip_es["s_per_image"] = round(clip_es["s"] / n_cam_images, 3)
    out = {
        "wall_s": rehearsal["wall_s"],
        "cpus": os.cpu_count(),
        "images": {k: len(v) for k, v in rehearsal["splits"].items()},
        "rules": rows,
        "bytes": sizes,
    }
    dest = Path(os.environ.get("POLE_REHEARSAL_JSON", work / "rehearsal.json"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    assert rows["train_cam"]["jobs"] == 2  # baseline and pole; clip_es has no CAM network
    assert clip_es["jobs"] == 2 and clip_es["s_per_image"] > 0 and clip_es["max_rss_mb"] > 0
