"""Small stand-ins for the dataset and CAM store, shared by the refine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pole_core.data.memory import MemoryDataset
from pole_core.io.cam_store import CamWriter


def two_region_image(h: int = 48, w: int = 48, split: int = 24, noise: float = 4.0, seed: int = 0):
    """Red left half, blue right half (column ``split``), light noise; and its true label map."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[:, :split] = (200, 40, 40)
    img[:, split:] = (40, 40, 200)
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, split:] = 1
    return img, label


def fake_dataset(
    images: dict[str, np.ndarray], masks: dict[str, np.ndarray], class_names, root=None
):
    """The refine stage's dataset: images and masks by id (sorted), labels from the masks."""
    return MemoryDataset(dict(sorted(images.items())), class_names, masks=masks, root=root)


def make_world(tmp: Path, n: int = 6, size: int = 40, n_classes: int = 3, write_voc: bool = False):
    """n images with one object of class ``i % n_classes`` on a flat background.

    Returns (dataset, cams_h5 path). CAMs are soft boxes around the object, with a
    stride-4 copy. With ``write_voc`` a VOC-like root (JPEGImages/, SegmentationClass/)
    is written too and becomes ``dataset.root``.
    """
    rng = np.random.default_rng(0)
    images, masks = {}, {}
    cams_h5 = tmp / "cams.h5"
    with CamWriter(cams_h5, {"classes": [f"c{i}" for i in range(n_classes)]}) as w:
        for i in range(n):
            image_id = f"img{i:03d}"
            h, wd = size, size + 4 * (i % 2)  # not all the same size
            img = np.full((h, wd, 3), 90, dtype=np.uint8)
            y0, x0 = rng.integers(4, 12, size=2)
            y1, x1 = y0 + size // 2, x0 + size // 2
            colour = rng.integers(150, 255, size=3)
            img[y0:y1, x0:x1] = colour
            img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
            cls = i % n_classes
            mask = np.zeros((h, wd), dtype=np.uint8)
            mask[y0:y1, x0:x1] = cls + 1
            yy, xx = np.mgrid[0:h, 0:wd]
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            cam = np.exp(-(((yy - cy) / (size / 4)) ** 2 + ((xx - cx) / (size / 4)) ** 2))[None]
            cam = (cam / cam.max()).astype(np.float32)
            cam_s4 = cam[:, ::4, ::4]
            w.add(image_id, cam, np.array([cls]), cam_s4=cam_s4)
            images[image_id], masks[image_id] = img, mask
    root = None
    if write_voc:
        root = tmp / "voc"
        (root / "JPEGImages").mkdir(parents=True)
        (root / "SegmentationClass").mkdir(parents=True)
        for image_id, img in images.items():
            Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            Image.fromarray(masks[image_id], mode="L").save(
                root / "SegmentationClass" / f"{image_id}.png"
            )
    return fake_dataset(images, masks, [f"c{i}" for i in range(n_classes)], root), cams_h5
