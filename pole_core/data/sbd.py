"""SBD -> VOC ``train_aug``: the SegmentationClassAug PNGs that SBD does not ship.

WSSS code trains on ``train_aug``: (SBD train ∪ SBD val ∪ VOC train) − VOC val, 10,582 ids
with VOC2012 itself. SBD (``benchmark_RELEASE/dataset``) stores its masks as MATLAB files
``cls/<id>.mat`` holding a struct ``GTcls`` whose field ``Segmentation`` is the H×W class
map (0 background, 1..20). :func:`build_train_aug` turns them into a folder that
:class:`~pole_core.data.voc.VOCDataset` reads as its ``aug_root``::

    out_dir/SegmentationClassAug/<id>.png   palette PNGs, one per train_aug id
    out_dir/train_aug.txt                   one id per line, sorted
    out_dir/cls_labels.npy                  {id: float32[20]} for train_aug, VOC train and val

Masks of ids VOC annotates come from VOC's ``SegmentationClass`` (it has the 255 boundary
band, SBD does not); the rest from SBD. Every data problem is one :class:`DataError` line
naming the file, and ``out_dir`` appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.io

from pole_core.data.voc import (
    VOC_CLASSES,
    DataError,
    VOCDataset,
    check_label_values,
    mask_labels,
    read_split,
)
from pole_core.io.atomic import atomic_dir, write_text
from pole_core.io.png import read_mask, write_mask

_LOG = logging.getLogger(__name__)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """The class map of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``) as uint8 H×W."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: SBD mask not found")
    try:
        doc = scipy.io.loadmat(path, variable_names=["GTcls"])
    except Exception as err:  # scipy raises ValueError, MatReadError, TypeError, OSError...
        raise DataError(
            f"{path}: unreadable .mat file ({type(err).__name__}: {_one_line(err)})"
        ) from None
    try:
        seg = doc["GTcls"][0, 0]["Segmentation"]
    except (KeyError, IndexError, ValueError, TypeError):
        raise DataError(f"{path}: no GTcls.Segmentation in the .mat file") from None
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected H×W")
    if seg.dtype.kind not in "uib" and not (
        seg.dtype.kind == "f" and np.isfinite(seg).all() and (seg == np.round(seg)).all()
    ):
        raise DataError(f"{path}: GTcls.Segmentation has non-integer type {seg.dtype}")
    if seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation values outside 0..255")
    return np.ascontiguousarray(seg, dtype=np.uint8)


def _labels(mask: np.ndarray, path: Path, n_classes: int) -> np.ndarray:
    """IRNet's multi-hot: entry k-1 is 1 when class k (1..C) is in the mask."""
    check_label_values(mask, n_classes, path)
    lab = mask_labels(mask, n_classes)
    if not lab.any():
        raise DataError(f"{path}: mask has no class")
    return lab


def build_train_aug(
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    log: logging.Logger | None = None,
) -> dict[str, int]:
    """Write ``out_dir`` (SegmentationClassAug/, train_aug.txt, cls_labels.npy); see the module.

    ``voc_root`` is ``VOCdevkit/VOC2012`` (JPEGImages, SegmentationClass,
    ImageSets/Segmentation/{train,val}.txt), ``sbd_root`` is ``benchmark_RELEASE/dataset``
    (cls/, train.txt, val.txt). The folder is built in a temporary sibling and renamed onto
    ``out_dir`` only when complete. Returns the counts that are also logged.
    """
    log = log or _LOG
    voc_root, sbd_root, out = Path(voc_root), Path(sbd_root), Path(out_dir)
    if not sbd_root.is_dir():
        raise DataError(f"{sbd_root}: SBD root not found")
    voc = VOCDataset(voc_root, class_names=list(VOC_CLASSES))
    n_classes = voc.n_classes
    voc_train, voc_val = voc.ids("train"), voc.ids("val")
    sbd_train = read_split(sbd_root / "train.txt")
    sbd_val = read_split(sbd_root / "val.txt")

    val_set, voc_train_set, sbd_train_set = set(voc_val), set(voc_train), set(sbd_train)
    ids = sorted((sbd_train_set | set(sbd_val) | voc_train_set) - val_set)
    for img_id in ids:
        img = voc.image_path(img_id)
        if not img.is_file():
            raise DataError(f"{img}: image not found (train_aug id {img_id!r})")
    counts = {
        "train_aug": len(ids),
        "voc_train": sum(i in voc_train_set for i in ids),
        "sbd_train_extra": sum(i in sbd_train_set and i not in voc_train_set for i in ids),
        "sbd_val_extra": sum(i not in sbd_train_set and i not in voc_train_set for i in ids),
        "voc_val_excluded": len((sbd_train_set | set(sbd_val)) & val_set),
        "masks_voc": 0,
        "masks_sbd": 0,
    }

    def load(img_id: str) -> tuple[np.ndarray, Path, str]:
        voc_png = voc_root / "SegmentationClass" / f"{img_id}.png"
        if voc_png.is_file():
            try:
                mask = read_mask(voc_png)
            except ValueError as err:
                msg = _one_line(err)
                raise DataError(
                    msg if msg.startswith(str(voc_png)) else f"{voc_png}: {msg}"
                ) from None
            path, source = voc_png, "voc"
        else:
            path, source = sbd_root / "cls" / f"{img_id}.mat", "sbd"
            mask = read_sbd_mat(path)
        size = voc.image_size(img_id)
        if mask.shape != size:
            raise DataError(
                f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from image "
                f"{voc.image_path(img_id)} {size[0]}x{size[1]}"
            )
        return mask, path, source

    with atomic_dir(out) as tmp:
        cls_labels: dict[str, np.ndarray] = {}
        for k, img_id in enumerate(ids, 1):
            mask, path, source = load(img_id)
            cls_labels[img_id] = _labels(mask, path, n_classes)
            write_mask(tmp / "SegmentationClassAug" / f"{img_id}.png", mask)
            counts[f"masks_{source}"] += 1
            if k % 1000 == 0:
                log.info("train_aug: %d / %d masks written", k, len(ids))
        for img_id in voc_val:
            if img_id not in cls_labels:
                mask, path, _ = load(img_id)
                cls_labels[img_id] = _labels(mask, path, n_classes)
        write_text(tmp / "train_aug.txt", "\n".join(ids) + "\n")
        np.save(tmp / "cls_labels.npy", cls_labels, allow_pickle=True)
        counts["cls_labels"] = len(cls_labels)
    log.info(
        "train_aug: %d ids = %d VOC train + %d more from SBD train + %d more from SBD val "
        "(%d SBD ids in VOC val left out); masks: %d from VOC SegmentationClass, %d from SBD "
        "cls/*.mat; cls_labels.npy: %d ids (train_aug + VOC val) -> %s",
        counts["train_aug"],
        counts["voc_train"],
        counts["sbd_train_extra"],
        counts["sbd_val_extra"],
        counts["voc_val_excluded"],
        counts["masks_voc"],
        counts["masks_sbd"],
        counts["cls_labels"],
        out,
    )
    return counts
