"""Dense CRF: keeps clean masks, snaps shifted ones to the colour edge, confident labels, shards."""

from __future__ import annotations

import numpy as np
import pytest
from refine_fakes import make_world, two_region_image

from pole_core.io.cam_store import open_cams, read_cam
from pole_core.io.png import read_mask
from pole_core.metrics import miou
from pole_core.refine.crf import (
    bench_crf,
    cam_to_label,
    crf_inference,
    crf_refine_cam,
    crf_refine_label,
    load_bench_items,
    run_crf_shard,
)


def test_clean_mask_is_kept():
    img, label = two_region_image()
    out = crf_inference(img, label, 2)
    assert out.dtype == np.uint8 and out.shape == label.shape
    assert miou(label, out, 2) > 0.99


def test_shifted_mask_moves_to_the_edge():
    img, label = two_region_image()
    shifted = np.zeros_like(label)
    shifted[:, 30:] = 1  # true edge at column 24
    blurred = np.stack([1.0 - shifted, shifted]).astype(np.float32) * 0.6 + 0.2
    before = miou(label, shifted, 2)
    after_labels = miou(label, crf_inference(img, shifted, 2), 2)
    after_probs = miou(label, crf_inference(img, blurred, 2), 2)
    assert after_labels > before + 0.05
    assert after_probs > before + 0.05


def test_input_checks():
    img, label = two_region_image()
    with pytest.raises(ValueError, match="labels must lie"):
        crf_inference(img, label + 5, 2)
    with pytest.raises(ValueError, match="image must be"):
        crf_inference(img[..., 0], label, 2)
    # one label: nothing to do, no CRF needed
    assert not crf_inference(img, np.zeros_like(label), 1).any()


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


def test_cam_to_label_marks_the_uncertain_band():
    img, cam = _three_bands()
    out = cam_to_label(img, cam, np.array([4]), fg_thresh=0.30, bg_thresh=0.05)
    assert set(np.unique(out)) == {0, 5, 255}
    assert (out[:, :20] == 0).mean() > 0.99  # below bg_thresh in both runs: confident background
    assert (out[:, 20:40] == 255).mean() > 0.99  # between the thresholds: uncertain
    assert (out[:, 40:] == 5).mean() > 0.99  # above fg_thresh: confident class, label = key + 1


def test_cam_to_label_no_classes_and_refine():
    img, cam = _three_bands()
    assert not cam_to_label(img, cam[:0], np.array([], dtype=np.int64)).any()
    ref = crf_refine_cam(img, cam, np.array([2]), 0.5)
    assert (ref[:, :40] == 0).all() and (ref[:, 40:] == 3).all()
    with pytest.raises(ValueError, match="does not match"):
        cam_to_label(img, cam, np.array([1, 2]))


def test_run_crf_shard_writes_resumes_and_pools(tmp_path):
    ds, cams = make_world(tmp_path, n=6)
    ids = ds.ids()
    out1 = tmp_path / "serial"
    res = run_crf_shard(ds, ids[:3], cams, out1, progress=False)
    assert res == {"done": 3, "skipped": 0}
    # a half-written file from a killed run is redone; complete ones are skipped
    (out1 / f"{ids[3]}.png").write_bytes(b"\x89PNG broken")
    res = run_crf_shard(ds, ids, cams, out1, progress=False)
    assert res == {"done": 3, "skipped": 3}
    out2 = tmp_path / "pool"
    run_crf_shard(ds, ids, cams, out2, workers=2, progress=False)
    with open_cams(cams) as f:
        for image_id in ids:
            a, b = read_mask(out1 / f"{image_id}.png"), read_mask(out2 / f"{image_id}.png")
            np.testing.assert_array_equal(a, b)
            cam, keys = read_cam(f, image_id)
            expected = cam_to_label(ds.image(image_id), cam, keys)
            np.testing.assert_array_equal(a, expected)
            assert a.shape == ds.image(image_id).shape[:2]
            assert set(np.unique(a)) <= {0, int(keys[0]) + 1, 255}
    res = run_crf_shard(ds, ids, cams, tmp_path / "ref", mode="refine", progress=False)
    assert res["done"] == 6
    with pytest.raises(ValueError, match="mode"):
        run_crf_shard(ds, ids, cams, tmp_path / "x", mode="nope")


def test_bench_crf_reports_timings(tmp_path):
    ds, cams = make_world(tmp_path, n=4)
    items = load_bench_items(ds, ds.ids(), cams)
    res = bench_crf(items, processes=2)
    assert set(res) >= {"t1", "t2", "efficiency", "n_images"}
    assert res["t1"] > 0 and res["t2"] > 0 and res["n_images"] == 4


def test_crf_refine_label_snaps_keys_and_rejects_strangers():
    img, label = two_region_image()
    shifted = np.zeros_like(label)
    shifted[:, 30:] = 7  # class key 6 → label 7; true edge at column 24
    out = crf_refine_label(img, shifted, np.array([6]))
    assert set(np.unique(out)) == {0, 7}
    assert miou(label * 7, out, 8) > miou(label * 7, shifted, 8) + 0.05
    assert not crf_refine_label(img, np.zeros_like(label), np.array([], dtype=np.int64)).any()
    with pytest.raises(ValueError, match=r"label values \[3\]"):
        crf_refine_label(img, shifted.clip(0, 3), np.array([6]))
    with pytest.raises(ValueError, match="does not match image size"):
        crf_refine_label(img, shifted[:-1], np.array([6]))
