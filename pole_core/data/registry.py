"""Dataset entries: ``data.source`` names one reader, and every reader looks the same.

A reader gives the pipeline ids per split (``ids``), pixels (``image``, ``image_size``,
``image_path``), image-level labels (``labels``, float32[C]), optional ground truth
(``mask``, ``has_mask``), and its class bank (``bank``: names, prompts, synonyms,
background words). Adding a format is one module with such a reader plus one entry in
:data:`DATASETS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DatasetEntry:
    """How to open one kind of dataset, and whether it can be scored."""

    open: Callable[..., Any]  # (root, *, aug_root, cache_dir) -> reader
    has_ground_truth: Callable[[Path], bool]  # masks for the scoring splits?
    layout: str  # one line for error messages and docs


def _open_voc(root: Path, *, aug_root: Path | None = None, cache_dir: Path | None = None):
    from .voc import VOCDataset

    return VOCDataset(root, aug_root=aug_root)


def _open_coco(root: Path, *, aug_root: Path | None = None, cache_dir: Path | None = None):
    from .coco import CocoDataset

    return CocoDataset(root, cache_dir=cache_dir)


def _open_folder(root: Path, *, aug_root: Path | None = None, cache_dir: Path | None = None):
    from .folder import FolderDataset

    return FolderDataset(root)


def _folder_has_masks(root: Path) -> bool:
    from .folder import has_ground_truth

    return has_ground_truth(root)


DATASETS: dict[str, DatasetEntry] = {
    "world": DatasetEntry(_open_voc, lambda root: True, "the generated demo world (VOC layout)"),
    "voc": DatasetEntry(_open_voc, lambda root: True, "VOCdevkit/VOC2012"),
    "coco": DatasetEntry(_open_coco, lambda root: True, "COCO 2014: <split>/ + annotations/"),
    "folder": DatasetEntry(
        _open_folder, _folder_has_masks, "images/ + labels.csv + classes.yaml [+ masks/]"
    ),
}


def entry(source: str) -> DatasetEntry:
    if source not in DATASETS:
        raise ValueError(f"data.source: unknown {source!r} (one of {', '.join(DATASETS)})")
    return DATASETS[source]


def open_dataset(
    source: str,
    root: str | os.PathLike,
    *,
    aug_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """The reader of ``data.source`` over ``root`` (``aug_root``: SBD's converted masks for
    VOC; ``cache_dir``: where COCO caches its ground-truth PNGs)."""
    return entry(source).open(
        Path(root),
        aug_root=Path(aug_root) if aug_root else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
    )


def has_ground_truth(source: str, root: str | os.PathLike) -> bool:
    """Whether the scoring stages can run (a folder dataset without masks/ cannot)."""
    return entry(source).has_ground_truth(Path(root))
