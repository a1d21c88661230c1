"""Segmenter inference (multi-scale + flip), optional dense CRF (refine.crf), and val evaluation.

Predictions are palette PNGs (0 background, 1..C classes) written atomically,
one per image; a rerun skips the ones already there (an atomic write means an
existing file is a complete one), so an interrupted inference resumes.
Scores come from :func:`pole_core.metrics.score`, the only mIoU in the pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..device import autocast, resolve_device
from ..io.png import read_mask, write_mask
from ..metrics import score

if TYPE_CHECKING:
    from ..refine.crf import CRFParams


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


def predict_dataset(
    net: nn.Module,
    dataset: Any,
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: CRFParams | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> None:
    """Write ``out_dir/<id>.png`` label maps for ``ids``; existing files are kept (resume).

    With ``crf`` the labels are the argmax of :func:`pole_core.refine.crf.dense_crf` over the
    averaged probabilities as unary (−log p, the DeepLab post-processing), else of the
    probabilities themselves.
    """
    dev = _device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.to(dev).eval()
    todo = [i for i in ids if not (out_dir / f"{i}.png").is_file()]
    for image_id in tqdm(todo, desc="seg predict", disable=not progress):
        image = dataset.image(image_id)
        probs = predict(net, image, scales=scales, flip=flip, device=dev)
        if crf is not None:
            from ..refine.crf import dense_crf, prob_unary  # pydensecrf only when asked for

            probs = dense_crf(image, prob_unary(probs), crf)
        labels = probs.argmax(0).astype(np.uint8)
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
