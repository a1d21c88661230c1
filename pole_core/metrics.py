"""Confusion-matrix mIoU: the only place the pipeline computes a segmentation score.

Labels are 0 = background, 1..C = classes, 255 = ignore. IoU per class is
TP / (TP + FP + FN) over one confusion matrix accumulated across the whole
split (not averaged per image). Classes absent from both ground truth and
prediction have no IoU and are excluded from the mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    """Accumulate a (C+1)×(C+1) confusion matrix; rows = ground truth, columns = prediction."""

    def __init__(self, n_labels: int):
        self.n = int(n_labels)
        self.mat = np.zeros((self.n, self.n), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt = np.asarray(gt).astype(np.int64).ravel()
        pred = np.asarray(pred).astype(np.int64).ravel()
        if gt.shape != pred.shape:
            raise ValueError(
                f"ground truth and prediction differ in size: {gt.size} vs {pred.size}"
            )
        keep = gt != IGNORE
        gt, pred = gt[keep], pred[keep]
        bad = (gt < 0) | (gt >= self.n) | (pred < 0) | (pred >= self.n)
        if bad.any():
            raise ValueError(
                f"label outside 0..{self.n - 1} (and {IGNORE}) in ground truth or prediction"
            )
        self.mat += np.bincount(gt * self.n + pred, minlength=self.n * self.n).reshape(
            self.n, self.n
        )

    def iou(self) -> np.ndarray:
        """Per-label IoU in [0,1]; NaN where the label occurs in neither GT nor prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over labels present in GT or prediction, in [0,1]."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def score(pairs: Iterable[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]) -> dict:
    """mIoU (%) and per-class IoU (%) over (gt, pred) pairs; ``class_names`` excludes background."""
    names = ["background", *class_names]
    cm = ConfusionMatrix(len(names))
    n = 0
    for gt, pred in pairs:
        cm.update(gt, pred)
        n += 1
    iou = cm.iou()
    return {
        "miou": round(100.0 * cm.miou(), 4),
        "per_class": {
            name: (None if np.isnan(v) else round(100.0 * float(v), 4))
            for name, v in zip(names, iou, strict=True)
        },
        "n_images": n,
    }


def miou(gt: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """mIoU in [0,1] of one (or one stacked) pair; convenience for tests and sweeps."""
    cm = ConfusionMatrix(n_labels)
    cm.update(gt, pred)
    return cm.miou()
