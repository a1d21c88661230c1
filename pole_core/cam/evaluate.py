"""CAM quality as mIoU against ground truth, swept over the background threshold (IRNet ``eval_cam``).

A CAM becomes a label map by giving the background a constant score ``bg_thresh`` and
taking the argmax over [background, labelled classes] (:func:`cam_to_label`).
:func:`eval_cams` scores many thresholds in one pass over the images: a pixel's
prediction depends on the threshold only through "is its best class score above it?",
so one joint histogram of (how many thresholds the best score exceeds, ground truth,
best class) per split gives every threshold's confusion matrix exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from ..io.cam_store import open_cams, read_cam
from ..metrics import IGNORE, ConfusionMatrix


def cam_to_label(cam: np.ndarray, keys: np.ndarray, bg_thresh: float) -> np.ndarray:
    """uint8 label map (0 bg, keys+1) from a CAM [k,H,W]: argmax over [bg_thresh, cam...].

    Ties go to the background, as ``np.argmax`` over IRNet's padded array does.
    """
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64)
    if cam.ndim != 3 or cam.shape[0] != keys.shape[0]:
        raise ValueError(f"cam [k,H,W] and keys [k] disagree: {cam.shape} vs {keys.shape}")
    padded = np.concatenate([np.full((1, *cam.shape[1:]), bg_thresh, np.float32), cam], 0)
    lut = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return lut[np.argmax(padded, axis=0)]


def _best_class(cam: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max class score, its label keys+1) per pixel; all-zero score where no class is kept."""
    if cam.shape[0] == 0:
        return np.zeros(cam.shape[1:], np.float32), np.zeros(cam.shape[1:], np.int64)
    return cam.max(axis=0), (keys + 1)[cam.argmax(axis=0)]


def _per_class(cm: ConfusionMatrix, names: Sequence[str]) -> dict[str, float | None]:
    """Per-label IoU in percent, in :func:`pole_core.metrics.score`'s format."""
    return {
        name: (None if np.isnan(v) else round(100.0 * float(v), 4))
        for name, v in zip(names, cm.iou(), strict=True)
    }


def eval_cams(
    cams_h5: str | os.PathLike,
    dataset: Any,
    ids: Sequence[str],
    thresholds: Sequence[float],
    *,
    split: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """CAM mIoU (%) of ``ids`` for every background threshold; the best one and its per-class IoU.

    Returns ``{"miou", "best_threshold", "per_class", "curve": [{"threshold", "miou"}, ...],
    "split", "n_images"}`` (``per_class`` includes "background", None = class absent).
    """
    if len(thresholds) == 0:
        raise ValueError("thresholds: need at least one background threshold")
    if len(ids) == 0:
        raise ValueError("eval_cams: no image ids to evaluate")
    thr = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float32)
    names = ["background", *dataset.class_names]
    n = len(names)
    n_thr = len(thr)
    # joint[c, gt, pred]: pixels whose best class score exceeds exactly c thresholds
    joint = np.zeros((n_thr + 1) * n * n, dtype=np.int64)
    with open_cams(cams_h5) as f:
        for image_id in tqdm(ids, disable=not progress, desc="eval cams"):
            cam, keys = read_cam(f, image_id)
            gt = np.asarray(dataset.mask(image_id))
            if cam.shape[1:] != gt.shape:
                raise ValueError(
                    f"{cams_h5}: CAM of {image_id!r} is {cam.shape[1:]}, its mask is {gt.shape}"
                )
            if keys.size and (keys.min() < 0 or keys.max() >= n - 1):
                raise ValueError(f"{cams_h5}: keys of {image_id!r} outside 0..{n - 2}: {keys}")
            score, label = _best_class(cam, keys)
            valid = gt != IGNORE
            gt_v = gt[valid].astype(np.int64)
            if gt_v.size and gt_v.max() >= n:
                raise ValueError(
                    f"mask of {image_id!r}: label {gt_v.max()} outside 0..{n - 1} (and 255)"
                )
            above = np.searchsorted(thr, score[valid], side="left")  # thresholds < score
            joint += np.bincount((above * n + gt_v) * n + label[valid], minlength=joint.size)
    joint = joint.reshape(n_thr + 1, n, n)
    # Threshold j: pixels with above > j keep their class, the rest become background.
    fg = np.cumsum(joint[::-1], axis=0)[::-1]  # fg[c] = sum over above >= c
    bg_rows = np.cumsum(joint.sum(axis=2), axis=0)  # [c, gt] = sum over above <= c
    curve, matrices = [], []
    for j, t in enumerate(thr.tolist()):
        cm = ConfusionMatrix(n)
        cm.mat += fg[j + 1]
        cm.mat[:, 0] += bg_rows[j]
        matrices.append(cm)
        curve.append({"threshold": round(t, 6), "miou": round(100.0 * cm.miou(), 4)})
    best = int(np.nanargmax([c["miou"] for c in curve]))
    return {
        "miou": curve[best]["miou"],
        "best_threshold": curve[best]["threshold"],
        "per_class": _per_class(matrices[best], names),
        "curve": curve,
        "split": split,
        "n_images": len(ids),
    }
