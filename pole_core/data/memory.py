"""A dataset reader over arrays in memory: the reader interface without files.

For tests, benchmarks and notebooks that hold their images already: ``image``,
``image_size``, ``labels`` and, when given, ``mask``, all keyed by image id. Without
explicit labels an image's label is the classes its mask holds (1..C; 0 background and
255 ignore are not classes), as :class:`pole_core.data.voc.VOCDataset` derives them
when ``cls_labels.npy`` is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .voc import mask_labels


class MemoryDataset:
    """Images (and optionally masks and labels) by id; ``ids()`` keeps their order."""

    def __init__(
        self,
        images: Mapping[str, np.ndarray],
        class_names: Sequence[str],
        *,
        masks: Mapping[str, np.ndarray] | None = None,
        labels: Mapping[str, np.ndarray] | None = None,
        root: str | Path | None = None,
    ) -> None:
        if labels is None and masks is None:
            raise ValueError("MemoryDataset: give labels, masks or both")
        self._images = dict(images)
        self._masks = dict(masks) if masks is not None else {}
        self._labels = dict(labels) if labels is not None else None
        self.class_names = list(class_names)
        self.root = root

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def ids(self, split: str = "train") -> list[str]:
        return list(self._images)

    def image(self, image_id: str) -> np.ndarray:
        return self._images[image_id]

    def image_size(self, image_id: str) -> tuple[int, int]:
        h, w = self._images[image_id].shape[:2]
        return int(h), int(w)

    def has_mask(self, image_id: str) -> bool:
        return image_id in self._masks

    def mask(self, image_id: str) -> np.ndarray:
        return self._masks[image_id]

    def labels(self, image_id: str) -> np.ndarray:
        """float32[C] multi-hot: the given labels, else the classes present in the mask."""
        if self._labels is not None:
            return self._labels[image_id]
        return mask_labels(self._masks[image_id], self.n_classes)
