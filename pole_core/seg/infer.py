"""Segmenter inference (multi-scale + flip), optional dense CRF, and val evaluation.

Predictions are palette PNGs (0 background, 1..C classes) written atomically,
one per image; a rerun skips the ones already there (an atomic write means an
existing file is a complete one), so an interrupted inference resumes.
Scores come from :func:`pole_core.metrics.score`, the only mIoU in the pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..device import autocast, resolve_device
from ..io.png import read_mask, write_mask
from ..metrics import score

# Dense-CRF defaults on softmax unaries (the CLIP-ES / DeepLab post-processing values).
CRF_DEFAULTS: dict[str, float] = {
    "gauss_sxy": 3.0,
    "gauss_compat": 3.0,
    "bi_sxy": 80.0,
    "bi_srgb": 13.0,
    "bi_compat": 10.0,
    "iters": 10,
}
# Keys a shared CRF config block may carry that only matter for label unaries.
_CRF_LABEL_ONLY = {"gt_prob"}


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


@torch.no_grad()
def predict(
    net: nn.Module,
    image: np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities float32 (C+1)×H×W: softmax averaged over scales (and h-flips).

    Logits at each scale are resized back to H×W before the softmax, so every
    scale votes at full resolution. Puts ``net`` in eval mode.
    """
    dev = _device(device)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"predict: image must be H×W×3, got shape {image.shape}")
    net.eval()
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1)[None].float() / 255.0
    acc, n = None, 0
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = (
            x
            if size == (h, w)
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        )
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        with autocast(dev):
            logits = net(batch).float()
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        if flip:
            probs = torch.stack([probs[0], probs[1].flip(-1)])
        total = probs.sum(0)
        acc = total if acc is None else acc + total
        n += probs.shape[0]
    return (acc / n).cpu().numpy().astype(np.float32)


def dense_crf(image: np.ndarray, probs: np.ndarray, **params: float) -> np.ndarray:
    """Dense CRF on softmax unaries (−log p); returns uint8 labels H×W.

    Kept here rather than calling ``refine.crf.crf_inference`` because the
    segmenter has calibrated probabilities, and using them as unaries is the
    DeepLab post-processing; the refine stage builds unaries from hard labels.
    """
    import pydensecrf.densecrf as dcrf

    unknown = set(params) - set(CRF_DEFAULTS) - _CRF_LABEL_ONLY
    if unknown:
        raise ValueError(
            f"crf: unknown parameter(s) {sorted(unknown)}; known: {sorted(CRF_DEFAULTS)}"
        )
    p = {**CRF_DEFAULTS, **{k: v for k, v in params.items() if k in CRF_DEFAULTS}}
    n_labels, h, w = probs.shape
    unary = np.ascontiguousarray(
        -np.log(np.clip(probs, 1e-5, 1.0)).reshape(n_labels, -1), dtype=np.float32
    )
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=float(p["gauss_sxy"]), compat=float(p["gauss_compat"]))
    crf.addPairwiseBilateral(
        sxy=float(p["bi_sxy"]),
        srgb=float(p["bi_srgb"]),
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=float(p["bi_compat"]),
    )
    q = np.asarray(crf.inference(int(p["iters"])), dtype=np.float32).reshape(n_labels, h, w)
    return q.argmax(0).astype(np.uint8)


def predict_dataset(
    net: nn.Module,
    dataset: Any,
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> None:
    """Write ``out_dir/<id>.png`` label maps for ``ids``; existing files are kept (resume)."""
    dev = _device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.to(dev).eval()
    todo = [i for i in ids if not (out_dir / f"{i}.png").is_file()]
    for image_id in tqdm(todo, desc="seg predict", disable=not progress):
        image = dataset.image(image_id)
        probs = predict(net, image, scales=scales, flip=flip, device=dev)
        labels = dense_crf(image, probs, **crf) if crf else probs.argmax(0).astype(np.uint8)
        write_mask(out_dir / f"{image_id}.png", labels)


def _pairs(
    pred_dir: Path, dataset: Any, ids: Sequence[str]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for image_id in ids:
        path = pred_dir / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prediction missing for image {image_id!r}")
        gt, pred = dataset.mask(image_id), read_mask(path)
        if gt.shape != pred.shape:
            raise ValueError(f"{path}: prediction is {pred.shape}, ground truth is {gt.shape}")
        yield gt, pred


def evaluate_dir(pred_dir: str | os.PathLike, dataset: Any, ids: Sequence[str]) -> dict:
    """Score the PNGs in ``pred_dir`` against the dataset's masks: {"miou", "per_class", "n_images"} (%)."""
    return score(_pairs(Path(pred_dir), dataset, ids), dataset.class_names)
