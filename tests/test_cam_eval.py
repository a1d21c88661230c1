"""CAM evaluation: label maps from a background threshold, and the threshold sweep's mIoU."""

from __future__ import annotations

import numpy as np
import pytest

from pole_core.cam.evaluate import cam_to_label, eval_cams
from pole_core.io.cam_store import CamWriter
from pole_core.metrics import score


class MaskDataset:
    def __init__(self, masks: dict[str, np.ndarray], class_names: list[str]):
        self._masks = masks
        self.class_names = class_names

    def mask(self, image_id: str) -> np.ndarray:
        return self._masks[image_id]


def _write(path, cams: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    with CamWriter(path, {"classes": ["a", "b", "c"]}) as w:
        for image_id, (cam, keys) in cams.items():
            w.add(image_id, cam, keys)


def test_cam_to_label_argmax_with_background_and_key_mapping() -> None:
    cam = np.array([[[0.9, 0.1, 0.5]], [[0.2, 0.6, 0.5]]], np.float32)  # k=2, 1×3
    keys = np.array([2, 0])
    np.testing.assert_array_equal(cam_to_label(cam, keys, 0.3), [[3, 1, 3]])
    np.testing.assert_array_equal(cam_to_label(cam, keys, 0.7), [[3, 0, 0]])
    np.testing.assert_array_equal(cam_to_label(cam, keys, 0.5), [[3, 1, 0]])  # tie -> background
    empty = cam_to_label(np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64), 0.1)
    assert empty.dtype == np.uint8 and not empty.any()


def test_eval_known_miou_per_threshold(tmp_path) -> None:
    # 4×4: GT class "b" (label 2) in columns 0-1, background in 2-3, one ignored pixel.
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 2
    gt[0, 3] = 255
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, :, :2], cam[0, :, 2], cam[0, :, 3] = 0.75, 0.25, 0.125  # exact in float16
    _write(tmp_path / "c.h5", {"x": (cam, np.array([1]))})
    ds = MaskDataset({"x": gt}, ["a", "b", "c"])
    res = eval_cams(tmp_path / "c.h5", ds, ["x"], [0.9, 0.05, 0.25, 0.2, 0.5], split="train")
    curve = {c["threshold"]: c["miou"] for c in res["curve"]}
    # 0.05: all "b": b 8/15, bg 0/7 -> 26.6667. 0.2: cols 0-2 "b": b 8/12, bg 3/7 -> 54.7619.
    # 0.25 (tie -> bg) and 0.5: exact -> 100. 0.9: all bg: bg 7/15, b 0/8 -> 23.3333.
    assert curve == pytest.approx(
        {0.05: 26.6667, 0.2: 54.7619, 0.25: 100.0, 0.5: 100.0, 0.9: 23.3333}, abs=1e-3
    )
    assert [c["threshold"] for c in res["curve"]] == [0.05, 0.2, 0.25, 0.5, 0.9]
    assert res["miou"] == 100.0 and res["best_threshold"] == 0.25
    assert res["per_class"] == {"background": 100.0, "a": None, "b": 100.0, "c": None}
    assert res["n_images"] == 1 and res["split"] == "train"


def test_eval_matches_metrics_score_at_every_threshold(tmp_path) -> None:
    rng = np.random.default_rng(1)
    names = ["a", "b", "c"]
    cams, masks = {}, {}
    for i in range(6):
        h, w = 9 + i, 11
        keys = np.sort(rng.choice(3, size=i % 3 + (i == 0), replace=False))
        cam = rng.random((len(keys), h, w)).astype(np.float16).astype(np.float32)
        gt = rng.integers(0, 4, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        cams[f"i{i}"], masks[f"i{i}"] = (cam, keys), gt
    cams["none"] = (np.zeros((0, 5, 5), np.float32), np.zeros(0, np.int64))
    masks["none"] = np.ones((5, 5), np.uint8)
    _write(tmp_path / "c.h5", cams)
    ds = MaskDataset(masks, names)
    ids = list(cams)
    thresholds = [0.1, 0.3, 0.5, 0.7]
    res = eval_cams(tmp_path / "c.h5", ds, ids, thresholds)
    for point in res["curve"]:
        pairs = ((masks[i], cam_to_label(*cams[i], point["threshold"])) for i in ids)
        assert point["miou"] == score(pairs, names)["miou"]
    best_pairs = ((masks[i], cam_to_label(*cams[i], res["best_threshold"])) for i in ids)
    assert res["per_class"] == score(best_pairs, names)["per_class"]


def test_eval_errors_name_the_problem(tmp_path) -> None:
    _write(tmp_path / "c.h5", {"x": (np.ones((1, 3, 3), np.float32), np.array([0]))})
    ds = MaskDataset(
        {"x": np.zeros((4, 4), np.uint8), "y": np.zeros((3, 3), np.uint8)}, ["a", "b", "c"]
    )
    with pytest.raises(ValueError, match="'x'"):
        eval_cams(tmp_path / "c.h5", ds, ["x"], [0.1])
    with pytest.raises(KeyError, match="'y'"):
        eval_cams(tmp_path / "c.h5", ds, ["y"], [0.1])
    with pytest.raises(ValueError):
        eval_cams(tmp_path / "c.h5", ds, ["x"], [])
