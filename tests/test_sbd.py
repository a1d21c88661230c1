"""SBD -> train_aug (pole_core.data.sbd) and the VOC reader's aug_root / two-column lists."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from pole_core.data.sbd import build_train_aug, read_sbd_mat
from pole_core.data.voc import DataError, VOCDataset, read_split
from pole_core.io.png import read_mask, write_mask

REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16
VOC_TRAIN = ["2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003"]
SBD_TRAIN = ["2007_000001", "2007_000003", "2008_000010"]  # 2007_000003 is VOC val
SBD_VAL = ["2008_000011"]
TRAIN_AUG = ["2007_000001", "2007_000002", "2008_000010", "2008_000011"]


def _save_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """A cls/<id>.mat in SBD's layout: 1x1 struct GTcls with Segmentation, Boundaries, ..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bounds = np.empty((20, 1), dtype=object)
    for k in range(20):
        bounds[k, 0] = scipy.sparse.csc_matrix(seg.shape, dtype=bool)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path,
        {"GTcls": {"Segmentation": seg, "Boundaries": bounds, "CategoriesPresent": present}},
    )


def _sbd_map(cls: int, offset: int) -> np.ndarray:
    seg = np.zeros((H, W), np.uint8)
    seg[2 + offset : 7 + offset, 3:10] = cls
    seg[8:11, 11:15] = 15
    return seg


def _voc_map(cls: int) -> np.ndarray:
    seg = np.zeros((H, W), np.uint8)
    seg[3:8, 4:11] = cls
    seg[2, 3:12] = 255  # VOC's boundary band, which SBD does not have
    return seg


def _fake_roots(tmp_path: Path) -> tuple[Path, Path]:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    rng = np.random.default_rng(0)
    for img_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL)):
        p = voc / "JPEGImages" / f"{img_id}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(p, format="JPEG")
    for k, img_id in enumerate(VOC_TRAIN + VOC_VAL):
        write_mask(voc / "SegmentationClass" / f"{img_id}.png", _voc_map(k + 1))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    for k, img_id in enumerate(SBD_TRAIN + SBD_VAL):
        _save_sbd_mat(sbd / "cls" / f"{img_id}.mat", _sbd_map(k + 5, k % 2))
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return voc, sbd


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_read_sbd_mat_round_trip(tmp_path):
    seg = _sbd_map(7, 0)
    _save_sbd_mat(tmp_path / "x.mat", seg)
    out = read_sbd_mat(tmp_path / "x.mat")
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(out, seg)
    # The access path matches what loadmat gives for a MATLAB-written struct.
    assert scipy.io.loadmat(tmp_path / "x.mat")["GTcls"][0, 0]["Segmentation"].shape == (H, W)


def test_build_train_aug(tmp_path, caplog):
    voc, sbd = _fake_roots(tmp_path)
    out = tmp_path / "results" / "sbd"
    with caplog.at_level(logging.INFO, logger="pole_core.data.sbd"):
        counts = build_train_aug(voc, sbd, out)
    assert (out / "train_aug.txt").read_text().split() == TRAIN_AUG  # VOC val left out
    assert counts["train_aug"] == 4 and counts["voc_train"] == 2
    assert counts["sbd_train_extra"] == 1 and counts["sbd_val_extra"] == 1
    assert counts["voc_val_excluded"] == 1
    assert counts["masks_voc"] == 2 and counts["masks_sbd"] == 2
    assert "2 from VOC SegmentationClass, 2 from SBD" in caplog.text
    pngs = sorted(p.stem for p in (out / "SegmentationClassAug").glob("*.png"))
    assert pngs == TRAIN_AUG
    # SBD-only ids: the PNG is the .mat class map.
    for img_id in ("2008_000010", "2008_000011"):
        np.testing.assert_array_equal(
            read_mask(out / "SegmentationClassAug" / f"{img_id}.png"),
            read_sbd_mat(sbd / "cls" / f"{img_id}.mat"),
        )
    # VOC-annotated ids (also in SBD for 2007_000001): VOC's PNG, 255 band included.
    for img_id in VOC_TRAIN:
        aug = read_mask(out / "SegmentationClassAug" / f"{img_id}.png")
        np.testing.assert_array_equal(aug, read_mask(voc / "SegmentationClass" / f"{img_id}.png"))
        assert (aug == 255).any()
    with Image.open(out / "SegmentationClassAug" / "2008_000010.png") as im:
        assert im.mode == "P"
    table = np.load(out / "cls_labels.npy", allow_pickle=True).item()
    assert sorted(table) == sorted(TRAIN_AUG + VOC_VAL)
    assert all(v.dtype == np.float32 and v.shape == (20,) for v in table.values())
    assert np.flatnonzero(table["2007_000002"]).tolist() == [1]  # class 2 -> index 1
    assert np.flatnonzero(table["2008_000010"]).tolist() == [6, 14]  # classes 7 and 15
    assert np.flatnonzero(table["2007_000003"]).tolist() == [2]  # VOC val, from VOC's mask
    assert _leftovers(out.parent) == []
    # Building again replaces the folder whole.
    build_train_aug(voc, sbd, out)
    assert (out / "train_aug.txt").read_text().split() == TRAIN_AUG
    assert _leftovers(out.parent) == []


def test_reader_with_aug_root(tmp_path):
    voc, sbd = _fake_roots(tmp_path)
    out = tmp_path / "sbd"
    build_train_aug(voc, sbd, out)
    ds = VOCDataset(voc, aug_root=out)
    assert ds.ids("train_aug") == TRAIN_AUG  # not in ImageSets: from aug_root
    assert ds.ids("train") == VOC_TRAIN  # ImageSets first
    assert ds.mask_path("2007_000001") == voc / "SegmentationClass" / "2007_000001.png"
    assert ds.mask_path("2008_000010") == out / "SegmentationClassAug" / "2008_000010.png"
    np.testing.assert_array_equal(
        ds.mask("2008_000010"), read_sbd_mat(sbd / "cls" / "2008_000010.mat")
    )
    (out / "SegmentationClassAug" / "2008_000010.png").unlink()
    np.save(out / "cls_labels.npy", {"2008_000010": np.eye(20, dtype=np.float32)[4]})
    ds = VOCDataset(voc, aug_root=out)  # labels from aug_root's table: no mask needed
    assert np.flatnonzero(ds.labels("2008_000010")).tolist() == [4]
    with pytest.raises(DataError, match=r"nope\.txt: split file not found \(nor .*nope\.txt\)"):
        ds.ids("nope")
    with pytest.raises(DataError, match="aug root not found"):
        VOCDataset(voc, aug_root=tmp_path / "missing")


def test_root_cls_labels_win_over_aug_root(tmp_path):
    voc, sbd = _fake_roots(tmp_path)
    build_train_aug(voc, sbd, tmp_path / "sbd")
    np.save(voc / "cls_labels.npy", {"2007_000001": np.eye(20, dtype=np.float32)[9]})
    ds = VOCDataset(voc, aug_root=tmp_path / "sbd")
    assert np.flatnonzero(ds.labels("2007_000001")).tolist() == [9]


def test_two_column_lists(tmp_path):
    voc, _ = _fake_roots(tmp_path)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in VOC_TRAIN]
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(lines) + "\n\n")
    assert VOCDataset(voc).ids("train_aug") == VOC_TRAIN
    (tmp_path / "l.txt").write_text("2007_000001\nJPEGImages/2007_000002.jpg x.png\n")
    assert read_split(tmp_path / "l.txt") == VOC_TRAIN


def test_scoring_mask_prefers_segmentation_class(tmp_path):
    voc, _ = _fake_roots(tmp_path)
    aug = tmp_path / "aug"
    write_mask(aug / "SegmentationClassAug" / "2007_000001.png", np.full((H, W), 9, np.uint8))
    write_mask(voc / "SegmentationClassAug" / "2007_000002.png", np.full((H, W), 9, np.uint8))
    ds = VOCDataset(voc, aug_root=aug)
    for img_id in VOC_TRAIN:
        np.testing.assert_array_equal(
            ds.mask(img_id), read_mask(voc / "SegmentationClass" / f"{img_id}.png")
        )


@pytest.mark.parametrize(
    "damage, pattern",
    [
        (lambda p: p.write_bytes(b"not a MATLAB file at all"), "unreadable .mat file"),
        (lambda p: scipy.io.savemat(p, {"other": np.zeros((2, 2))}), "no GTcls.Segmentation"),
        (
            lambda p: scipy.io.savemat(p, {"GTcls": {"Boundaries": np.zeros((2, 2))}}),
            "no GTcls.Segmentation",
        ),
        (lambda p: _save_sbd_mat(p, np.zeros((H + 1, W), np.uint8)), "mask size 13x16 differs"),
        (lambda p: _save_sbd_mat(p, np.full((H, W), 30, np.uint8)), "label value 30 outside"),
        (lambda p: p.unlink(), "SBD mask not found"),
    ],
)
def test_bad_mat_is_one_line_and_leaves_nothing(tmp_path, damage, pattern):
    voc, sbd = _fake_roots(tmp_path)
    out = tmp_path / "results" / "sbd"
    build_train_aug(voc, sbd, out)
    before = (out / "train_aug.txt").read_text()
    bad = sbd / "cls" / "2008_000011.mat"
    damage(bad)
    with pytest.raises(DataError) as info:
        build_train_aug(voc, sbd, out)
    msg = str(info.value)
    assert msg.startswith(str(bad)) and "\n" not in msg
    assert pattern in msg
    assert _leftovers(out.parent) == []  # no temporary folder left
    assert (out / "train_aug.txt").read_text() == before  # the old folder untouched
    fresh = tmp_path / "results" / "fresh"
    with pytest.raises(DataError):
        build_train_aug(voc, sbd, fresh)
    assert not fresh.exists() and _leftovers(fresh.parent) == []


def test_missing_jpeg_and_voc_mask_size(tmp_path):
    voc, sbd = _fake_roots(tmp_path)
    jpg = voc / "JPEGImages" / "2008_000010.jpg"
    jpg.unlink()
    with pytest.raises(DataError, match=rf"^{jpg}: image not found"):
        build_train_aug(voc, sbd, tmp_path / "out")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(jpg, format="JPEG")
    png = voc / "SegmentationClass" / "2007_000002.png"
    write_mask(png, np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=rf"^{png}: mask size 4x4 differs from image"):
        build_train_aug(voc, sbd, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_rule_script_dataset_gets_aug_root(tmp_path):
    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    from _common import dataset
    from snakemake.iocontainers import Namedlist

    voc, _ = _fake_roots(tmp_path)
    (tmp_path / "sbd").mkdir()

    def inputs(aug: list[str] | None) -> Namedlist:
        nl = Namedlist()
        nl.append(str(voc))
        nl._add_name("data")
        if aug is not None:
            start = len(nl)
            nl.extend(aug)
            nl._set_name("aug", start, end=len(nl))
        return nl

    config = {"data": {"source": "voc"}, "results_dir": str(tmp_path / "results")}

    def job(aug):
        return SimpleNamespace(input=inputs(aug), config=config)

    assert dataset(job(None)).aug_root is None
    assert dataset(job([])).aug_root is None
    ds = dataset(job([str(tmp_path / "sbd")]))
    assert ds.aug_root == tmp_path / "sbd" and ds.root == voc
