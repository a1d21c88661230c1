"""Inputs of the benchmarks: reproducible synthetic images and the demo CAM net at a fixed init."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pole_core.data.memory import MemoryDataset


def synthetic_dataset(
    n_images: int, image_size: int = 64, n_classes: int = 10, seed: int = 0
) -> MemoryDataset:
    """In-memory images, labels and masks with the dataset interface; reproducible from ``seed``.

    Smooth random blobs on noise (not pure noise, so CAMs are not all flat), 1–3 labels
    per image. Masks are random too; this is for timing, not for scores.
    """
    rng = np.random.default_rng(seed)
    h = w = image_size
    yy, xx = np.mgrid[0:h, 0:w]
    images, labels, masks = {}, {}, {}
    for image_id in (f"img{i:05d}" for i in range(n_images)):
        img = rng.normal(110, 30, (h, w, 3))
        mask = np.zeros((h, w), np.uint8)
        lab = np.zeros(n_classes, np.float32)
        for k in rng.choice(n_classes, size=rng.integers(1, 4), replace=False):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 8, h / 3)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            img[blob] = rng.uniform(0, 255, 3)
            mask[blob] = k + 1
            lab[k] = 1.0
        images[image_id] = np.clip(img, 0, 255).astype(np.uint8)
        labels[image_id] = lab
        masks[image_id] = mask
    names = [f"class{i}" for i in range(n_classes)]
    return MemoryDataset(images, names, masks=masks, labels=labels)


class TinyCamNet(nn.Module):
    """Fallback stride-4 CAM net, used only when ``pole_core.cam.network`` cannot be imported."""

    stride = 4

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, 2, 1),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.Conv2d(width * 2, width * 2, 3, 1, 1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width * 2, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self(x))


# The default config's cam.strides for the mini backbone (output stride 4).
DEMO_STRIDES = (2, 2, 1, 1)


def build_demo_net(n_classes: int, seed: int = 0, backbone: str = "mini") -> tuple[nn.Module, str]:
    """A CAM net at a fixed random init (the demo's "mini", or the paper's ResNet-50), and a
    note on where it came from."""
    torch.manual_seed(seed)
    try:
        from pole_core.cam.network import build_cam_net
    except ImportError as err:
        return TinyCamNet(n_classes).eval(), f"fallback TinyCamNet (pole_core.cam.network: {err})"
    if backbone == "resnet50":
        net = build_cam_net(backbone="resnet50", n_classes=n_classes)
        return net.eval(), "pole_core.cam.network resnet50, strides [2, 2, 2, 1], random init"
    net = build_cam_net(backbone="mini", n_classes=n_classes, strides=DEMO_STRIDES)
    return net.eval(), f"pole_core.cam.network mini, strides {list(DEMO_STRIDES)}"
