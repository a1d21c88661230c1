"""A generated PASCAL VOC 2012 + SBD layout at real VOC sizes, and random-init weight files.

What the VOC-size rehearsal (tests/test_voc_rehearsal.py) runs `config/voc.yaml` on, with
the files where that config expects them (relative to the working directory):

    data/VOCdevkit/VOC2012/JPEGImages/<id>.jpg           500x375 and 375x500 JPEGs
    data/VOCdevkit/VOC2012/SegmentationClass/<id>.png    VOC train + val masks, 255 bands
    data/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt, train_aug.txt (two columns)
    data/VOCdevkit/VOC2012/cls_labels.npy                {id: float32[20]} (IRNet's int keys)
    data/benchmark_RELEASE/dataset/cls/<id>.mat          SBD's GTcls struct, the SBD-only ids
    data/benchmark_RELEASE/dataset/{train,val}.txt
    data/weights/resnet50-0676ba61.pth, resnet101-63fe2227.pth   torchvision layout, random init
    data/weights/ViT-B-32.pt                              OpenAI's key layout (fp16), random init
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io
import scipy.sparse
import torch

from pole_core.data.voc import VOC_CLASSES
from pole_core.io.png import write_mask

SIZES = ((375, 500), (500, 375))  # (H, W): VOC's landscape and portrait sizes


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image with 1-3 filled shapes of random VOC classes, and its class map (0 = bg)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, 3)
    img = (base + 30 * np.sin(xx[..., None] / rng.uniform(8, 40) + rng.uniform(0, 6))).clip(0, 255)
    seg = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, len(VOC_CLASSES) + 1))
        cy, cx = int(rng.integers(h // 5, 4 * h // 5)), int(rng.integers(w // 5, 4 * w // 5))
        ay, ax = int(rng.integers(h // 10, h // 3)), int(rng.integers(w // 10, w // 3))
        shape = np.zeros((h, w), np.uint8)
        cv2.ellipse(shape, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        inside = shape.astype(bool)
        img[inside] = rng.integers(0, 256, 3)
        seg[inside] = k
    noise = rng.normal(0, 8, img.shape)
    return (img + noise).clip(0, 255).astype(np.uint8), seg


def _with_bands(seg: np.ndarray, width: int = 5) -> np.ndarray:
    """VOC's masks mark object boundaries with a ~5-px band of 255 (ignore)."""
    edges = cv2.Canny(seg * 10, 1, 1) > 0
    band = cv2.dilate(edges.astype(np.uint8), np.ones((width, width), np.uint8)) > 0
    out = seg.copy()
    out[band] = 255
    return out


def _save_sbd_mat(path: Path, seg: np.ndarray) -> None:
    bounds = np.empty((20, 1), dtype=object)
    for k in range(20):
        bounds[k, 0] = scipy.sparse.csc_matrix(seg.shape, dtype=bool)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path, {"GTcls": {"Segmentation": seg, "Boundaries": bounds, "CategoriesPresent": present}}
    )


def make_vocdevkit(
    data: Path, *, n_train: int, n_val: int, n_sbd: int, seed: int = 0
) -> dict[str, list[str]]:
    """Write the VOC + SBD folders under ``data``; return the ids per split.

    VOC train ids have masks in SegmentationClass; the ``n_sbd`` SBD-only ids have
    only SBD .mat files (train_aug = VOC train + SBD-only, VOC val left out).
    """
    rng = np.random.default_rng(seed)
    voc = data / "VOCdevkit" / "VOC2012"
    sbd = data / "benchmark_RELEASE" / "dataset"
    for d in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"):
        d.mkdir(parents=True, exist_ok=True)
    (sbd / "cls").mkdir(parents=True, exist_ok=True)
    splits = {
        "train": [f"2007_{i:06d}" for i in range(n_train)],
        "val": [f"2008_{i:06d}" for i in range(n_val)],
        "sbd": [f"2009_{i:06d}" for i in range(n_sbd)],
    }
    labels: dict[int, np.ndarray] = {}
    for split, ids in splits.items():
        for i, img_id in enumerate(ids):
            img, seg = _scene(rng, SIZES[i % 2])
            cv2.imwrite(str(voc / "JPEGImages" / f"{img_id}.jpg"), img[..., ::-1])
            if split == "sbd":
                _save_sbd_mat(sbd / "cls" / f"{img_id}.mat", seg)
            else:
                write_mask(voc / "SegmentationClass" / f"{img_id}.png", _with_bands(seg))
            lab = np.zeros(len(VOC_CLASSES), np.float32)
            lab[np.unique(seg[seg > 0]) - 1] = 1
            labels[int(img_id.replace("_", ""))] = lab  # IRNet keys ids as ints
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in splits["train"]))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in splits["val"]))
    aug = sorted(splits["train"] + splits["sbd"])
    (lists / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in aug)
    )
    half = len(splits["sbd"]) // 2  # SBD's own train / val split; both are in train_aug
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in splits["sbd"][half:]))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in splits["sbd"][:half]))
    np.save(voc / "cls_labels.npy", labels, allow_pickle=True)
    return {"train": splits["train"], "val": splits["val"], "train_aug": aug, "sbd": splits["sbd"]}


@torch.no_grad()
def _calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """Give a random-init ResNet the BN statistics of its own activations.

    A real ImageNet file has statistics that keep activations in range; torchvision's
    initial ones (mean 0, var 1) let a frozen-BN ResNet's activations grow block by block
    until training diverges, which real weights never do.
    """
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    for _ in range(3):
        net(torch.rand(4, 3, 224, 224) * 4 - 2)
    return net.eval()


def make_weights(weights: Path, seed: int = 0) -> dict[str, Path]:
    """torchvision ResNet-50/101 and an OpenAI-layout ViT-B/32, all at random init."""
    import open_clip
    from torchvision.models import resnet50, resnet101

    torch.manual_seed(seed)
    weights.mkdir(parents=True, exist_ok=True)
    out = {
        "resnet50": weights / "resnet50-0676ba61.pth",
        "resnet101": weights / "resnet101-63fe2227.pth",
        "clip": weights / "ViT-B-32.pt",
    }
    # zero-init residual branches: activations stay at the scale of trained weights
    torch.save(_calibrated(resnet50(zero_init_residual=True)).state_dict(), out["resnet50"])
    torch.save(_calibrated(resnet101(zero_init_residual=True)).state_dict(), out["resnet101"])
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    # OpenAI's release stores fp16 tensors under these (open_clip's) names
    torch.save({k: v.half() for k, v in clip.state_dict().items()}, out["clip"])
    return out
