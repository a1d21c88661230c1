"""Pseudo-mask PNGs round-trip; VOC and mmsegmentation exports are complete and readable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from refine_fakes import make_world

from pole_core.io.png import read_mask, write_mask
from pole_core.refine.export import export_mmseg, export_voc


def test_pseudo_mask_palette_round_trip(tmp_path):
    mask = np.zeros((23, 31), dtype=np.uint8)
    mask[3:9, 4:20] = 7
    mask[10:, :5] = 20
    mask[0, :] = 255
    write_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.size == (31, 23)
    back = read_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(back, mask)
    assert set(np.unique(back)) == {0, 7, 20, 255}


def _pseudo(tmp_path, ds, ids):
    out = tmp_path / "pseudo"
    for image_id in ids:
        m = ds.mask(image_id).copy()
        m[0, :] = 255
        write_mask(out / f"{image_id}.png", m)
    return out


def _exportable(tmp_path, write_voc: bool):
    """5 images (3 train, 2 val) with pseudo-masks for the train ones."""
    ds, _ = make_world(tmp_path, n=5, write_voc=write_voc)
    ids = ds.ids()
    train, val = ids[:3], ids[3:]
    return ds, _pseudo(tmp_path, ds, train), train, val


def test_export_voc_layout(tmp_path):
    ds, pseudo, train, val = _exportable(tmp_path, write_voc=True)
    out = tmp_path / "export_voc"
    manifest = export_voc(pseudo, ds, train, val, out)
    assert json.loads((out / "export.json").read_text()) == manifest
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == train
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == val
    assert (out / "JPEGImages").is_symlink()
    assert not os.path.isabs(os.readlink(out / "JPEGImages"))  # relative: moves with the tree
    for image_id in train:
        with Image.open(out / "JPEGImages" / f"{image_id}.jpg") as im:
            size = im.size
        lab = read_mask(out / "SegmentationClassPseudo" / f"{image_id}.png")
        assert lab.shape == (size[1], size[0])
        np.testing.assert_array_equal(lab, read_mask(pseudo / f"{image_id}.png"))
    for image_id in val:
        assert (
            read_mask(out / "SegmentationClass" / f"{image_id}.png").shape
            == ds.mask(image_id).shape
        )
    # a rerun replaces the links and files in place
    export_voc(pseudo, ds, train, val, out)
    # switching an existing linked export to copies leaves the source untouched
    export_voc(pseudo, ds, train, val, out, link=False)
    assert not (out / "JPEGImages").is_symlink()
    assert len(list((ds.root / "JPEGImages").iterdir())) == 5
    # copies instead of links
    out2 = tmp_path / "export_voc_copy"
    m2 = export_voc(pseudo, ds, train, val, out2, link=False)
    assert m2["links"]["JPEGImages"] == "copy" and not (out2 / "JPEGImages").is_symlink()
    assert len(list((out2 / "JPEGImages").glob("*.jpg"))) == 5


def test_export_voc_names_missing_masks(tmp_path):
    ds, _ = make_world(tmp_path, n=3, write_voc=True)
    pseudo = _pseudo(tmp_path, ds, ds.ids()[:1])
    with pytest.raises(FileNotFoundError, match="img001"):
        export_voc(pseudo, ds, ds.ids(), [], tmp_path / "e")
    assert not (tmp_path / "e" / "export.json").exists()


@pytest.mark.parametrize("with_root", [True, False])
def test_export_mmseg_layout(tmp_path, with_root):
    ds, pseudo, train, val = _exportable(tmp_path, write_voc=with_root)
    out = tmp_path / "mm"
    snippet = export_mmseg(pseudo, ds, train, val, out)
    assert "type='BaseSegDataset'" in snippet and "ann_dir/train" in snippet
    assert "classes=('background', 'c0', 'c1', 'c2')" in snippet
    assert snippet in (out / "README.md").read_text()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["n_train"] == 3 and manifest["n_val"] == 2
    for split, split_ids in (("train", train), ("val", val)):
        assert sorted(p.stem for p in (out / "img_dir" / split).iterdir()) == split_ids
        for image_id in split_ids:
            with Image.open(out / "img_dir" / split / f"{image_id}.jpg") as im:
                assert im.format == "JPEG"
                w, h = im.size
            with Image.open(out / "ann_dir" / split / f"{image_id}.png") as ann:
                assert ann.mode == "P" and ann.size == (w, h)
            lab = read_mask(out / "ann_dir" / split / f"{image_id}.png")
            assert set(np.unique(lab)) <= {0, 1, 2, 3, 255}
            if split == "val":
                np.testing.assert_array_equal(lab, ds.mask(image_id))
            else:
                assert (lab[0] == 255).all()
    assert (out / "img_dir/train" / f"{train[0]}.jpg").is_symlink() == with_root


def test_export_mmseg_rejects_bad_labels(tmp_path):
    ds, _ = make_world(tmp_path, n=2)
    pseudo = tmp_path / "pseudo"
    write_mask(pseudo / "img000.png", np.full(ds.mask("img000").shape, 9, dtype=np.uint8))
    with pytest.raises(ValueError, match="outside"):
        export_mmseg(pseudo, ds, ["img000"], [], tmp_path / "mm")
