"""Shared augmentation: geometry of each transform, and AugmentedDataset reproducibility."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pole_core.cam.network import IMAGENET_MEAN, IMAGENET_STD
from pole_core.data.transforms import (
    MEAN_FILL,
    AugmentedDataset,
    hflip,
    random_crop,
    random_resize_long,
    resize_long,
    to_tensor,
)
from pole_core.data.voc import VOCDataset
from pole_core.demo.world import generate_world


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> VOCDataset:
    root = tmp_path_factory.mktemp("world")
    generate_world(root, n_train=6, n_val=2, n_clip=0, progress=False)
    return VOCDataset(root)


def _coded(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel equals its mask, to check they stay aligned."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 9, (h, w)).astype(np.uint8)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = mask
    img[..., 1] = 77
    return img, mask


def test_to_tensor():
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    t = to_tensor(img)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert t[0, 0, 0] == 1.0 and t[1, 0, 0] == 0.0 and abs(float(t[2, 0, 0]) - 128 / 255) < 1e-6
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 5), np.uint8))


def test_resize_long_keeps_aspect_and_labels():
    img, mask = _coded(30, 60)
    out = resize_long(img, 90)
    assert out.shape == (45, 90, 3)
    m = resize_long(mask, 20, cv2.INTER_NEAREST)
    assert m.shape == (10, 20) and set(np.unique(m).tolist()) <= set(np.unique(mask).tolist())


def test_random_resize_long_range_and_alignment():
    img, mask = _coded(40, 20)
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(30):
        out, (m,) = random_resize_long(img, [mask], 30, 34, rng)
        sizes.add(max(out.shape[:2]))
        assert out.shape[:2] == m.shape
        target = max(out.shape[:2])  # one draw resizes image (linear) and mask (nearest)
        np.testing.assert_array_equal(out, resize_long(img, target))
        np.testing.assert_array_equal(m, resize_long(mask, target, cv2.INTER_NEAREST))
    assert sizes <= set(range(30, 35)) and len(sizes) > 1


def test_random_crop_pads_small_inputs():
    img, mask = _coded(10, 6)
    rng = np.random.default_rng(1)
    out, (m,) = random_crop(img, [mask], 16, rng)
    assert out.shape == (16, 16, 3) and m.shape == (16, 16)
    pad = out[..., 1] == 0
    assert pad.sum() == 16 * 16 - 10 * 6
    assert (m[pad] == 255).all() and (m[~pad] != 255).all()
    np.testing.assert_array_equal(out[~pad][:, 0], m[~pad])
    _, (m2,) = random_crop(img, [mask], 16, rng, mask_fill=0)
    assert (m2 != 255).all()


def test_random_crop_larger_inputs_and_no_masks():
    img, mask = _coded(40, 50)
    rng = np.random.default_rng(2)
    for _ in range(10):
        out, (m,) = random_crop(img, [mask], 16, rng)
        assert out.shape == (16, 16, 3) and (out[..., 1] == 77).all()
        np.testing.assert_array_equal(out[..., 0], m)
    out, masks = random_crop(img, None, 16, rng)
    assert out.shape == (16, 16, 3) and masks == []


def test_hflip():
    img, mask = _coded(4, 5)
    np.testing.assert_array_equal(hflip(img)[:, 0], img[:, -1])
    np.testing.assert_array_equal(hflip(hflip(mask)), mask)


def _items(aug: AugmentedDataset, order) -> dict[int, dict]:
    return {i: aug[i] for i in order}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_augmented_dataset_shapes(ds):
    ids = ds.ids("train")
    aug = AugmentedDataset(
        ds, ids, resize_long=(40, 80), crop_size=48, flip=True, seed=0, mask_fn=ds.mask
    )
    assert len(aug) == 6
    for i in range(len(aug)):
        item = aug[i]
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
        assert item["mask"].shape == (48, 48) and item["mask"].dtype == torch.int64
        np.testing.assert_array_equal(item["labels"].numpy(), ds.labels(ids[i]))
        assert item["index"] == i
        vals = set(item["mask"].unique().tolist())
        assert vals <= set(range(9)) | {255}
    plain = AugmentedDataset(ds, ids, resize_long=None, crop_size=None, flip=False, seed=0)
    item = plain[0]
    assert "mask" not in item
    np.testing.assert_array_equal(
        (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), ds.image(ids[0])
    )


@pytest.mark.parametrize(("fill", "colour"), [("black", (0, 0, 0)), ("mean", MEAN_FILL)])
def test_augmented_dataset_padding_is_ignored(ds, fill, colour):
    aug = AugmentedDataset(
        ds,
        ds.ids("train"),
        resize_long=(32, 32),
        crop_size=48,
        flip=False,
        seed=0,
        mask_fn=ds.mask,
        crop_fill=fill,
    )
    item = aug[0]
    pixels = (item["image"].permute(1, 2, 0) * 255).round().to(torch.uint8)
    pad = (pixels == torch.tensor(colour, dtype=torch.uint8)).all(-1)
    assert int(pad.sum()) == 48 * 48 - 32 * 32
    assert (item["mask"][pad] == 255).all()


def test_mean_fill_is_zero_after_imagenet_normalisation():
    """IRNet/CLIMS pad the normalised image with 0: the mean colour before normalising."""
    mean = torch.tensor(MEAN_FILL, dtype=torch.float32) / 255
    normalised = (mean - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert normalised.abs().max() < 0.01


def test_unknown_crop_fill_is_refused(ds):
    with pytest.raises(ValueError, match="crop_fill"):
        AugmentedDataset(
            ds, [], resize_long=None, crop_size=8, flip=False, seed=0, crop_fill="grey"
        )


def test_augmented_dataset_deterministic_and_order_free(ds):
    kw = {"resize_long": (40, 80), "crop_size": 48, "flip": True, "seed": 3, "mask_fn": ds.mask}
    ids = ds.ids("train")
    a = _items(AugmentedDataset(ds, ids, **kw), range(6))
    b = _items(AugmentedDataset(ds, ids, **kw), reversed(range(6)))
    assert all(_same(a[i], b[i]) for i in range(6))

    other_epoch = AugmentedDataset(ds, ids, **kw)
    other_epoch.set_epoch(1)
    c = _items(other_epoch, range(6))
    assert not all(_same(a[i], c[i]) for i in range(6))
    other_seed = _items(AugmentedDataset(ds, ids, **{**kw, "seed": 4}), range(6))
    assert not all(_same(a[i], other_seed[i]) for i in range(6))


def test_augmented_dataset_in_a_dataloader(ds):
    aug = AugmentedDataset(
        ds, ds.ids("train"), resize_long=(40, 80), crop_size=32, flip=True, seed=0, mask_fn=ds.mask
    )
    batch = next(iter(torch.utils.data.DataLoader(aug, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["labels"].shape == (4, 8) and batch["mask"].shape == (4, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert torch.equal(batch["image"][2], aug[2]["image"])


def test_mask_fn_size_mismatch_is_reported(ds):
    aug = AugmentedDataset(
        ds,
        ds.ids("train"),
        resize_long=None,
        crop_size=None,
        flip=False,
        seed=0,
        mask_fn=lambda _id: np.zeros((3, 3), np.uint8),
    )
    with pytest.raises(ValueError, match="mask shape"):
        aug[0]
