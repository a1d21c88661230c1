"""Shared augmentation for CAM, affinity and segmentation training (IRNet-style).

Images are uint8 H×W×3 RGB arrays until :func:`to_tensor`; label maps travel
alongside as a list of H×W arrays and are always resized with nearest neighbour
(labels must never be interpolated). Randomness comes from an explicit
``np.random.Generator``; :class:`AugmentedDataset` seeds one per item from
``(seed, epoch, index)`` so an epoch's augmentations do not depend on the number of
DataLoader workers or the order items are fetched in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .voc import VOCDataset

IGNORE = 255


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 -> float32 3×H×W in [0, 1] (CLIP normalisation happens in ClipBundle)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def resize_long(
    img: np.ndarray, long_side: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Resize so that max(H, W) == ``long_side``, keeping the aspect ratio."""
    h, w = img.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (W, H)
    if (size[1], size[0]) == (h, w):
        return img.copy()
    out = cv2.resize(img, size, interpolation=interpolation)
    if img.ndim == 3 and out.ndim == 2:  # cv2 drops a singleton channel axis
        out = out[..., None]
    return out


def random_resize_long(
    img: np.ndarray,
    masks: Sequence[np.ndarray] | None,
    lo: int,
    hi: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Resize the long side to a uniform integer in [lo, hi]; masks follow (nearest)."""
    target = int(rng.integers(lo, hi + 1))
    out = resize_long(img, target, cv2.INTER_LINEAR)
    return out, [resize_long(m, target, cv2.INTER_NEAREST) for m in masks or ()]


# The ImageNet mean colour as uint8: IRNet/CLIMS normalise first and pad with 0, which is
# this colour before normalisation.
MEAN_FILL: tuple[int, int, int] = (124, 116, 104)
CROP_FILLS: dict[str, int | tuple[int, int, int]] = {"mean": MEAN_FILL, "black": 0}


def random_crop(
    img: np.ndarray,
    masks: Sequence[np.ndarray] | None,
    size: int,
    rng: np.random.Generator,
    mask_fill: int = IGNORE,
    image_fill: int | Sequence[int] = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A ``size``×``size`` window at a random place; smaller inputs are padded first.

    Padding is ``image_fill`` for the image (0, or :data:`MEAN_FILL`, the colour that
    IRNet/CLIMS's zero padding after normalisation stands for) and ``mask_fill``
    (ignore) for masks, and the image is
    placed at a random offset inside the padded canvas (as IRNet does), so padding does
    not always sit bottom-right.
    """
    h, w = img.shape[:2]
    ch, cw = max(size, h), max(size, w)
    py, px = int(rng.integers(ch - h + 1)), int(rng.integers(cw - w + 1))
    cy, cx = int(rng.integers(ch - size + 1)), int(rng.integers(cw - size + 1))

    def crop(a: np.ndarray, fill: int | Sequence[int]) -> np.ndarray:
        if (ch, cw) != (h, w):
            canvas = np.full((ch, cw, *a.shape[2:]), fill, dtype=a.dtype)
            canvas[py : py + h, px : px + w] = a
            a = canvas
        return np.ascontiguousarray(a[cy : cy + size, cx : cx + size])

    return crop(img, image_fill), [crop(m, mask_fill) for m in masks or ()]


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right (works for images and masks)."""
    return np.ascontiguousarray(img[:, ::-1])


class AugmentedDataset(Dataset):
    """Training view of a VOCDataset: resize, flip, crop; yields tensors.

    Items are ``{"image": float 3×S×S, "labels": float[C], "index": i}`` plus
    ``"mask": int64 S×S`` (255 where padded) when ``mask_fn`` is given (e.g. GT masks
    or pseudo-masks of a later stage). Call :meth:`set_epoch` before each epoch so the
    augmentations change; with workers, set it before creating the epoch's iterator.
    """

    def __init__(
        self,
        dataset: VOCDataset,
        ids: Sequence[str],
        *,
        resize_long: tuple[int, int] | None,
        crop_size: int | None,
        flip: bool,
        seed: int,
        mask_fn: Callable[[str], np.ndarray] | None = None,
        crop_fill: str = "mean",
    ):
        if crop_fill not in CROP_FILLS:
            raise ValueError(f"crop_fill must be one of {sorted(CROP_FILLS)}, got {crop_fill!r}")
        self.dataset = dataset
        self.ids = list(ids)
        self.resize_long = resize_long
        self.crop_size = crop_size
        self.flip = flip
        self.seed = int(seed)
        self.mask_fn = mask_fn
        self.image_fill = CROP_FILLS[crop_fill]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        img_id = self.ids[i]
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        img = self.dataset.image(img_id)
        masks = [] if self.mask_fn is None else [np.asarray(self.mask_fn(img_id))]
        if masks and masks[0].shape != img.shape[:2]:
            raise ValueError(
                f"{img_id}: mask shape {masks[0].shape} differs from image {img.shape[:2]}"
            )
        if self.resize_long is not None:
            img, masks = random_resize_long(img, masks, *self.resize_long, rng)
        if self.flip and rng.random() < 0.5:
            img, masks = hflip(img), [hflip(m) for m in masks]
        if self.crop_size is not None:
            img, masks = random_crop(img, masks, self.crop_size, rng, image_fill=self.image_fill)
        item = {
            "image": to_tensor(img),
            "labels": torch.from_numpy(self.dataset.labels(img_id)),
            "index": int(i),
        }
        if masks:
            item["mask"] = torch.from_numpy(masks[0].astype(np.int64))
        return item
