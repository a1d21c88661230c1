"""Dense CRF: keeps clean masks, snaps shifted ones to the colour edge, confident labels, shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from refine_fakes import make_world, two_region_image

from pole_core.io.cam_store import open_cams, read_cam
from pole_core.io.png import read_mask
from pole_core.metrics import miou
from pole_core.refine.crf import (
    CRFParams,
    cam_to_ir_label,
    crf_refine_cam,
    crf_refine_label,
    dense_crf,
    ir_label_fn,
    label_unary,
    prob_unary,
    refine_fn,
    write_labels,
)

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
PAPER = CRFParams()
KEY0 = np.array([0])  # one class, key 0: labels 0 (background) and 1


@pytest.mark.parametrize("group", [("crf",), ("random_walk", "final_crf")])
def test_crf_params_defaults_are_the_schema_defaults(group):
    """CRFParams() is what crf.* and random_walk.final_crf.* default to (the schema is the source)."""
    node = yaml.safe_load(SCHEMA.read_text())
    for key in group:
        node = node["properties"][key]
    props = node["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(CRFParams)}
    assert fields == {name: props[name]["default"] for name in fields}
    for name in fields:  # the same names and types as the config keys
        assert props[name]["type"] == ("integer" if name == "iters" else "number"), name
    # every other key of the group is a threshold or a switch, not a CRF term CRFParams lacks
    assert set(props) - set(fields) <= {
        "fg_thresh",
        "bg_thresh",
        "eval_bg_thresh",
        "shards",
        "enabled",
    }


def test_clean_mask_is_kept():
    img, label = two_region_image()
    out = crf_refine_label(img, label, KEY0, params=PAPER)
    assert out.dtype == np.uint8 and out.shape == label.shape
    assert miou(label, out, 2) > 0.99


def test_shifted_mask_moves_to_the_edge():
    img, label = two_region_image()
    shifted = np.zeros_like(label)
    shifted[:, 30:] = 1  # true edge at column 24
    blurred = np.stack([1.0 - shifted, shifted]).astype(np.float32) * 0.6 + 0.2
    before = miou(label, shifted, 2)
    after_labels = miou(label, crf_refine_label(img, shifted, KEY0, params=PAPER), 2)
    after_probs = miou(label, dense_crf(img, prob_unary(blurred), PAPER).argmax(0), 2)
    assert after_labels > before + 0.05
    assert after_probs > before + 0.05


def test_input_checks():
    img, label = two_region_image()
    with pytest.raises(ValueError, match="labels must lie"):
        label_unary(label + 5, 2, gt_prob=PAPER.gt_prob)
    with pytest.raises(ValueError, match="image must be"):
        dense_crf(img[..., 0], label_unary(label, 2, gt_prob=PAPER.gt_prob), PAPER)
    # one label: nothing to do, no CRF needed
    one = label_unary(np.zeros_like(label), 1, gt_prob=PAPER.gt_prob)
    assert not dense_crf(img, one, PAPER).argmax(0).any()
    with pytest.raises(TypeError, match="sxy"):
        CRFParams(sxy=3)  # an unknown term is an error, not silently dropped
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER.iters = 3


def _three_bands(h=32, w=60):
    """Three colour bands (columns 0-19, 20-39, 40-59) with CAM 0.0, 0.15 and 0.8."""
    rng = np.random.default_rng(1)
    img = np.zeros((h, w, 3), dtype=np.float64)
    cam = np.zeros((1, h, w), dtype=np.float32)
    for band, (colour, score) in enumerate(
        [((30, 160, 30), 0.0), ((160, 160, 30), 0.15), ((30, 30, 200), 0.8)]
    ):
        img[:, 20 * band : 20 * (band + 1)] = colour
        cam[0, :, 20 * band : 20 * (band + 1)] = score
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, cam


def test_cam_to_ir_label_marks_the_uncertain_band():
    img, cam = _three_bands()
    out = cam_to_ir_label(img, cam, np.array([4]), fg_thresh=0.30, bg_thresh=0.05, params=PAPER)
    assert set(np.unique(out)) == {0, 5, 255}
    assert (out[:, :20] == 0).mean() > 0.99  # below bg_thresh in both runs: confident background
    assert (out[:, 20:40] == 255).mean() > 0.99  # between the thresholds: uncertain
    assert (out[:, 40:] == 5).mean() > 0.99  # above fg_thresh: confident class, label = key + 1


def test_cam_to_ir_label_no_classes_and_refine():
    img, cam = _three_bands()
    empty = np.array([], dtype=np.int64)
    assert not cam_to_ir_label(
        img, cam[:0], empty, fg_thresh=0.30, bg_thresh=0.05, params=PAPER
    ).any()
    ref = crf_refine_cam(img, cam, np.array([2]), bg_thresh=0.5, params=PAPER)
    assert (ref[:, :40] == 0).all() and (ref[:, 40:] == 3).all()
    with pytest.raises(ValueError, match="does not match"):
        cam_to_ir_label(img, cam, np.array([1, 2]), fg_thresh=0.30, bg_thresh=0.05, params=PAPER)


def test_shard_writers_write_resume_and_pool(tmp_path):
    ds, cams = make_world(tmp_path, n=6)
    ids = ds.ids()
    thresh = {"fg_thresh": 0.30, "bg_thresh": 0.05}
    ir_label = ir_label_fn(**thresh, params=PAPER)
    out1 = tmp_path / "serial"
    res = write_labels(ds, ids[:3], cams, out1, ir_label, progress=False)
    assert res == {"done": 3, "skipped": 0}
    # a half-written file from a killed run is redone; complete ones are skipped
    (out1 / f"{ids[3]}.png").write_bytes(b"\x89PNG broken")
    res = write_labels(ds, ids, cams, out1, ir_label, progress=False)
    assert res == {"done": 3, "skipped": 3}
    out2 = tmp_path / "pool"
    write_labels(ds, ids, cams, out2, ir_label, workers=2, progress=False)
    with open_cams(cams) as f:
        for image_id in ids:
            a, b = read_mask(out1 / f"{image_id}.png"), read_mask(out2 / f"{image_id}.png")
            np.testing.assert_array_equal(a, b)
            cam, keys = read_cam(f, image_id)
            expected = cam_to_ir_label(ds.image(image_id), cam, keys, **thresh, params=PAPER)
            np.testing.assert_array_equal(a, expected)
            assert a.shape == ds.image(image_id).shape[:2]
            assert set(np.unique(a)) <= {0, int(keys[0]) + 1, 255}
    out3 = tmp_path / "ref"
    res = write_labels(ds, ids, cams, out3, refine_fn(bg_thresh=0.15, params=PAPER), progress=False)
    assert res["done"] == 6
    with open_cams(cams) as f:
        for image_id in ids:
            cam, keys = read_cam(f, image_id)
            expected = crf_refine_cam(ds.image(image_id), cam, keys, bg_thresh=0.15, params=PAPER)
            np.testing.assert_array_equal(read_mask(out3 / f"{image_id}.png"), expected)


def test_crf_refine_label_snaps_keys_and_rejects_strangers():
    img, label = two_region_image()
    shifted = np.zeros_like(label)
    shifted[:, 30:] = 7  # class key 6 → label 7; true edge at column 24
    out = crf_refine_label(img, shifted, np.array([6]), params=PAPER)
    assert set(np.unique(out)) == {0, 7}
    assert miou(label * 7, out, 8) > miou(label * 7, shifted, 8) + 0.05
    empty = np.array([], dtype=np.int64)
    assert not crf_refine_label(img, np.zeros_like(label), empty, params=PAPER).any()
    with pytest.raises(ValueError, match=r"label values \[3\]"):
        crf_refine_label(img, shifted.clip(0, 3), np.array([6]), params=PAPER)
    with pytest.raises(ValueError, match="does not match image size"):
        crf_refine_label(img, shifted[:-1], np.array([6]), params=PAPER)
