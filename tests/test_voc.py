"""VOCDataset: one reader for VOC2012 and the world; every data problem is a one-line DataError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pole_core.data.voc import (
    VOC_CLASSES,
    VOC_PROMPTS,
    VOC_SYNONYMS,
    DataError,
    VOCDataset,
    load_classes,
)
from pole_core.demo.world import WORLD_CLASSES, generate_world
from pole_core.io.png import write_mask


def _jpeg(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path, format="JPEG", quality=95, **kw)


def _voc_root(tmp_path: Path, n: int = 3, h: int = 20, w: int = 30) -> Path:
    """A tiny VOC2012-shaped root: ids a0..a{n-1}, masks with class 1 + 15, train split."""
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    ids = [f"a{i}" for i in range(n)]
    for img_id in ids:
        _jpeg(
            root / "JPEGImages" / f"{img_id}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        )
        mask = np.zeros((h, w), np.uint8)
        mask[2:8, 2:8] = 1
        mask[10:15, 10:20] = 15
        mask[1, :] = 255
        write_mask(root / "SegmentationClass" / f"{img_id}.png", mask)
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\n".join(ids) + "\n")
    return root


def test_voc_constants():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane"
    assert VOC_PROMPTS["diningtable"] == "dining table"
    assert VOC_PROMPTS["pottedplant"] == "potted plant"
    assert VOC_PROMPTS["tvmonitor"] == "tv monitor"
    assert VOC_PROMPTS["cat"] == "cat"
    assert VOC_PROMPTS["person"] == "player"  # CLIMS/POLE prompt; "person" is a synonym
    assert set(VOC_SYNONYMS) == set(VOC_CLASSES)
    # the released POLE bank: three synonyms per class, four for person
    for name, syn in VOC_SYNONYMS.items():
        assert len(syn) == len(set(syn)) == (4 if name == "person" else 3), name
        assert VOC_PROMPTS[name] not in syn
    assert VOC_SYNONYMS["aeroplane"] == ["aircraft", "airplane", "plane"]
    assert VOC_SYNONYMS["person"] == ["person", "individual", "human", "people"]
    assert VOC_SYNONYMS["horse"] == ["equine", "mare", "stallion"]
    assert VOC_SYNONYMS["motorbike"] == ["motorcycle", "bike", "scooter"]


def test_load_classes_falls_back_to_voc(tmp_path):
    bank = load_classes(tmp_path)
    assert bank.names == list(VOC_CLASSES)
    assert bank.prompts[VOC_CLASSES.index("tvmonitor")] == "tv monitor"
    assert bank.synonyms["sofa"] == ["couch", "loveseat", "settee"]
    with pytest.raises(DataError, match="not found"):
        load_classes(tmp_path / "nope.json")


def test_load_classes_from_json(tmp_path):
    doc = {
        "classes": [
            {"name": "boat", "prompt": "boat", "synonyms": ["ship"]},
            {"name": "pottedplant", "prompt": "potted plant", "synonyms": ["planter"]},
        ],
        "bg_words": ["water"],
    }
    (tmp_path / "classes.json").write_text(json.dumps(doc))
    for source in (tmp_path, tmp_path / "classes.json"):
        bank = load_classes(source)
        assert bank.names == ["boat", "pottedplant"]
        assert bank.prompts == ["boat", "potted plant"]
        assert bank.synonyms["pottedplant"] == ["planter"]
        assert bank.bg_words == ["water"]
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DataError, match="classes.json"):
        load_classes(tmp_path)


def test_reads_a_voc_root(tmp_path):
    root = _voc_root(tmp_path)
    ds = VOCDataset(root)
    assert ds.class_names == list(VOC_CLASSES) and ds.n_classes == 20
    assert ds.ids("train") == ["a0", "a1", "a2"]
    img = ds.image("a0")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert ds.image_size("a0") == (20, 30)
    mask = ds.mask("a0")
    assert mask.shape == (20, 30) and set(np.unique(mask).tolist()) == {0, 1, 15, 255}
    lab = ds.labels("a0")
    assert lab.dtype == np.float32 and lab.shape == (20,)
    assert np.flatnonzero(lab).tolist() == [0, 14]
    assert ds.has_mask("a0") and not ds.has_mask("zzz")


def test_reads_the_world(tmp_path):
    generate_world(tmp_path / "w", n_train=4, n_val=2, n_clip=0, progress=False)
    ds = VOCDataset(tmp_path / "w")
    assert ds.class_names == list(WORLD_CLASSES)
    for img_id in ds.ids("train") + ds.ids("val"):
        assert ds.image(img_id).shape == (64, 64, 3)
        from_mask = (np.bincount(ds.mask(img_id).ravel(), minlength=256)[1:9] > 0).astype(
            np.float32
        )
        np.testing.assert_array_equal(ds.labels(img_id), from_mask)


def test_cls_labels_preferred_over_mask(tmp_path):
    root = _voc_root(tmp_path)
    lab = np.zeros(20, np.float32)
    lab[3] = 1
    np.save(root / "cls_labels.npy", {"a0": lab})
    ds = VOCDataset(root)
    np.testing.assert_array_equal(ds.labels("a0"), lab)
    assert np.flatnonzero(ds.labels("a1")).tolist() == [0, 14]  # not in the table: from mask


def test_irnet_integer_keys_in_cls_labels(tmp_path):
    root = _voc_root(tmp_path, n=1)
    (root / "JPEGImages" / "a0.jpg").rename(root / "JPEGImages" / "2007_000032.jpg")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    lab = np.zeros(20, np.float32)
    lab[[0, 14]] = 1
    np.save(root / "cls_labels.npy", {np.int32(2007000032): lab})
    ds = VOCDataset(root)
    assert ds.ids("train") == ["2007_000032"]
    np.testing.assert_array_equal(ds.labels("2007_000032"), lab)


def test_segmentation_class_preferred_over_aug(tmp_path):
    # Scoring uses VOC's ground truth (255 boundaries); Aug only for ids VOC lacks.
    root = _voc_root(tmp_path)
    aug = np.full((20, 30), 7, np.uint8)
    write_mask(root / "SegmentationClassAug" / "a0.png", aug)
    (root / "SegmentationClass" / "a1.png").unlink()
    write_mask(root / "SegmentationClassAug" / "a1.png", aug)
    ds = VOCDataset(root)
    assert ds.mask("a0").max() == 255 and not (ds.mask("a0") == 7).any()
    assert (ds.mask("a1") == 7).all()  # not in SegmentationClass: falls back to Aug


def test_missing_root():
    with pytest.raises(DataError, match="dataset root not found"):
        VOCDataset(Path("/nonexistent/VOC2012"))


def test_split_errors(tmp_path):
    root = _voc_root(tmp_path)
    ds = VOCDataset(root)
    with pytest.raises(DataError, match="val.txt: split file not found"):
        ds.ids("val")
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: split is empty"):
        ds.ids("empty")
    (root / "ImageSets/Segmentation/bad.txt").write_text("a0\nghost\n")
    with pytest.raises(DataError, match=r"bad\.txt: id 'ghost' has no image"):
        ds.ids("bad")


def test_truncated_jpeg(tmp_path, monkeypatch):
    root = _voc_root(tmp_path, h=64, w=64)
    path = root / "JPEGImages" / "a0.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = VOCDataset(root)
    with pytest.raises(DataError, match=r"a0\.jpg: unreadable image"):
        ds.image("a0")
    # Even when another library made PIL lenient, the reader refuses half images.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="unreadable image"):
        ds.image("a0")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_not_an_image(tmp_path):
    root = _voc_root(tmp_path)
    (root / "JPEGImages" / "a1.jpg").write_text("this is not a JPEG\n")
    ds = VOCDataset(root)
    with pytest.raises(DataError, match=r"a1\.jpg: unreadable image"):
        ds.image("a1")
    with pytest.raises(DataError, match=r"a1\.jpg: unreadable image"):
        ds.image_size("a1")
    (root / "JPEGImages" / "a2.jpg").unlink()
    with pytest.raises(DataError, match="image not found"):
        ds.image("a2")


def test_grayscale_cmyk_and_palette_images_become_rgb(tmp_path):
    root = _voc_root(tmp_path)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[5:, :, 1] = 100
    _jpeg(root / "JPEGImages" / "a0.jpg", rgb, mode="L")
    _jpeg(root / "JPEGImages" / "a1.jpg", rgb, mode="CMYK")
    # A palette PNG saved under a .jpg name (it happens in scraped data).
    Image.fromarray(rgb).convert("P").save(root / "JPEGImages" / "a2.jpg", format="PNG")
    ds = VOCDataset(root)
    gray = ds.image("a0")
    assert gray.shape == (20, 30, 3) and (gray[..., 0] == gray[..., 1]).all()
    for img_id in ("a1", "a2"):
        out = ds.image(img_id)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        assert abs(int(out[0, 0, 0]) - 200) < 20 and abs(int(out[10, 10, 1]) - 100) < 20


def test_mask_wrong_size(tmp_path):
    root = _voc_root(tmp_path)
    write_mask(root / "SegmentationClass" / "a0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"a0\.png: mask size 10x10 differs from image 20x30"):
        VOCDataset(root).mask("a0")


def test_mask_value_out_of_range(tmp_path):
    root = _voc_root(tmp_path)
    mask = np.zeros((20, 30), np.uint8)
    mask[3, 3] = 21
    write_mask(root / "SegmentationClass" / "a0.png", mask)
    with pytest.raises(DataError, match=r"a0\.png: label value 21 outside 0\.\.20"):
        VOCDataset(root).mask("a0")
    # The same file is fine with more classes, and wrong with fewer.
    assert VOCDataset(root, class_names=[f"c{i}" for i in range(21)]).mask("a0")[3, 3] == 21
    with pytest.raises(DataError, match="label value 15"):
        VOCDataset(root, class_names=["x", "y"]).mask("a1")


def test_unreadable_mask(tmp_path):
    root = _voc_root(tmp_path)
    (root / "SegmentationClass" / "a0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"a0\.png"):
        VOCDataset(root).mask("a0")
    (root / "SegmentationClass" / "a1.png").unlink()
    with pytest.raises(DataError, match="mask not found"):
        VOCDataset(root).mask("a1")


def test_16bit_mask(tmp_path):
    root = _voc_root(tmp_path)
    mask = np.zeros((20, 30), np.uint16)
    mask[4:9, 4:9] = 12
    mask[0, :] = 255
    Image.fromarray(mask).save(root / "SegmentationClass" / "a0.png")
    with Image.open(root / "SegmentationClass" / "a0.png") as im:
        assert im.mode.startswith("I")
    ds = VOCDataset(root)
    out = ds.mask("a0")
    assert out.dtype == np.uint8 and set(np.unique(out).tolist()) == {0, 12, 255}
    mask[0, 0] = 300
    Image.fromarray(mask).save(root / "SegmentationClass" / "a1.png")
    with pytest.raises(DataError, match=r"a1\.png"):
        ds.mask("a1")


def test_label_without_class(tmp_path):
    root = _voc_root(tmp_path)
    mask = np.zeros((20, 30), np.uint8)
    mask[5, :] = 255
    write_mask(root / "SegmentationClass" / "a0.png", mask)
    ds = VOCDataset(root)
    with pytest.raises(DataError, match=r"a0\.png: image 'a0' has no class"):
        ds.labels("a0")
    np.save(root / "cls_labels.npy", {"a1": np.zeros(20, np.float32)})
    with pytest.raises(DataError, match=r"cls_labels\.npy: image 'a1' has no class"):
        VOCDataset(root).labels("a1")


def test_tiny_images(tmp_path):
    root = _voc_root(tmp_path, h=5, w=7)
    ds = VOCDataset(root, class_names=["a", "b"] + [f"c{i}" for i in range(13)])
    assert ds.image("a0").shape == (5, 7, 3)
    assert ds.image_size("a0") == (5, 7)
