"""Hand the pseudo-masks to a downstream segmenter: a VOC-style tree or an mmsegmentation layout.

Both exports are idempotent and crash-safe: every file is written (or linked)
atomically and the manifest ``export.json`` is written last, so a directory
without it is an unfinished export. Images are linked with *relative* symlinks
when the file system allows it (no copy of a 2 GB VOC tree; the export stays
valid when the results folder and the data move together), copied otherwise or
when ``link=False``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.atomic import atomic_path, write_json, write_text
from ..io.png import read_mask, write_mask

__all__ = ["export_voc", "export_mmseg", "mmseg_dataset_config"]

MANIFEST = "export.json"


def _link_or_copy(src: Path, dst: Path, link: bool) -> str:
    """Point ``dst`` at ``src`` by a relative symlink (atomic replace), else copy; returns the method."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        tmp = dst.with_name(f".{dst.name}.tmp.{os.getpid()}")
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(os.path.relpath(src, dst.parent), tmp)
            if dst.is_dir() and not dst.is_symlink():
                tmp.unlink()  # an earlier export copied files here; keep that directory
            else:
                os.replace(tmp, dst)
                return "symlink"
        except OSError:
            if tmp.is_symlink():
                tmp.unlink()
    if dst.is_symlink():  # an earlier export linked; copies must not land in the source
        dst.unlink()
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file():
                _copy_file(f, dst / f.name)
    else:
        _copy_file(src, dst)
    return "copy"


def _copy_file(src: Path, dst: Path) -> None:
    if dst.is_symlink():
        dst.unlink()
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _check_pseudo(pseudo_dir: Path, ids: Sequence[str]) -> None:
    """Every train id needs a readable pseudo-mask; name the first few missing ones in one line."""
    missing = [i for i in ids if not (pseudo_dir / f"{i}.png").is_file()]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{pseudo_dir}: no pseudo-mask for {', '.join(missing[:3])}{more}")


def _check_size(mask_path: Path, image_path: Path) -> None:
    """Image and mask must have the same size; PIL reads only the headers."""
    with Image.open(mask_path) as m, Image.open(image_path) as im:
        if m.size != im.size:
            raise ValueError(
                f"{mask_path}: size {m.size} differs from image {image_path} {im.size}"
            )


def _write_list(path: Path, ids: Sequence[str]) -> None:
    write_text(path, "".join(f"{i}\n" for i in ids))


def export_voc(
    pseudo_dir: str | os.PathLike,
    dataset: Any,
    ids_train: Sequence[str],
    ids_val: Sequence[str],
    out_root: str | os.PathLike,
    *,
    link: bool = True,
) -> dict[str, Any]:
    """Write a VOC-style tree that DeepLab-type repos read with one path change.

    ``out_root/SegmentationClassPseudo/<id>.png`` (train pseudo-masks, copied),
    ``JPEGImages`` and ``SegmentationClass`` (GT, for val), ``ImageSets/Segmentation/
    {train,val}.txt``; returns the manifest also written to ``out_root/export.json``.
    A VOC-layout ``dataset.root`` has its folders linked; any other dataset (COCO, a
    folder of PNGs) gets one ``<id>.jpg`` per image (linked when it is a JPEG, else
    encoded) and its ground-truth masks written, when it has them.
    """
    pseudo_dir, out_root = Path(pseudo_dir), Path(out_root)
    dataset_root = Path(dataset.root)
    _check_pseudo(pseudo_dir, ids_train)
    jpeg_src = dataset_root / "JPEGImages"
    voc_layout = jpeg_src.is_dir()
    (out_root / MANIFEST).unlink(missing_ok=True)

    for image_id in ids_train:
        src = pseudo_dir / f"{image_id}.png"
        read_mask(src)  # fails with one line naming the file when damaged
        image = jpeg_src / f"{image_id}.jpg" if voc_layout else Path(dataset.image_path(image_id))
        if image.is_file():
            _check_size(src, image)
        _copy_file(src, out_root / "SegmentationClassPseudo" / f"{image_id}.png")

    gt_src = dataset_root / "SegmentationClass"
    if voc_layout:
        methods = {"JPEGImages": _link_or_copy(jpeg_src, out_root / "JPEGImages", link)}
        if gt_src.is_dir():
            methods["SegmentationClass"] = _link_or_copy(
                gt_src, out_root / "SegmentationClass", link
            )
    else:
        methods = {"JPEGImages": "per image"}
        for image_id in dict.fromkeys([*ids_train, *ids_val]):
            _put_jpeg(dataset, image_id, out_root / "JPEGImages" / f"{image_id}.jpg", link)
        with_gt = [i for i in ids_val if dataset.has_mask(i)]
        for image_id in with_gt:
            write_mask(out_root / "SegmentationClass" / f"{image_id}.png", dataset.mask(image_id))
        if with_gt:
            methods["SegmentationClass"] = "written"
    sets = out_root / "ImageSets" / "Segmentation"
    _write_list(sets / "train.txt", ids_train)
    _write_list(sets / "val.txt", ids_val)

    manifest = {
        "format": "voc",
        "train_labels": "SegmentationClassPseudo",
        "val_labels": "SegmentationClass" if "SegmentationClass" in methods else None,
        "n_train": len(ids_train),
        "n_val": len(ids_val),
        "pseudo_dir": str(pseudo_dir.resolve()),
        "dataset_root": str(dataset_root.resolve()),
        "links": methods,
    }
    write_json(out_root / MANIFEST, manifest)
    return manifest


def _put_jpeg(dataset: Any, image_id: str, dst: Path, link: bool) -> tuple[int, int]:
    """``dst`` = the image as a JPEG: linked when the source is one, else encoded; (H, W)."""
    if hasattr(dataset, "image_path"):
        src = Path(dataset.image_path(image_id))
    else:  # a reader without image files of its own: a VOC-like root, if any
        root = getattr(dataset, "root", None)
        src = Path(root) / "JPEGImages" / f"{image_id}.jpg" if root is not None else None
    if src is not None and src.suffix.lower() in (".jpg", ".jpeg") and src.is_file():
        _link_or_copy(src, dst, link)
        with Image.open(src) as im:
            return im.size[1], im.size[0]
    img = np.ascontiguousarray(dataset.image(image_id))
    with atomic_path(dst) as tmp:
        Image.fromarray(img).save(tmp, format="JPEG", quality=95)
    return img.shape[0], img.shape[1]


def mmseg_dataset_config(
    data_root: str | os.PathLike, split: str, class_names: Sequence[str]
) -> str:
    """One line of mmsegmentation (1.x) config for a split of :func:`export_mmseg`'s layout.

    Labels keep 0 = background as a class (``reduce_zero_label=False``) and 255 as
    ``ignore_index`` (mmseg's default).
    """
    classes = ("background", *class_names)
    return (
        f"dict(type='BaseSegDataset', data_root={str(data_root)!r}, "
        f"data_prefix=dict(img_path='img_dir/{split}', seg_map_path='ann_dir/{split}'), "
        f"img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False, "
        f"metainfo=dict(classes={classes!r}))"
    )


def export_mmseg(
    pseudo_dir: str | os.PathLike,
    dataset: Any,
    ids_train: Sequence[str],
    ids_val: Sequence[str],
    out_root: str | os.PathLike,
    *,
    link: bool = True,
) -> str:
    """Write the mmsegmentation custom-dataset layout; return a README snippet with its config.

    ``img_dir/{train,val}/<id>.jpg`` (linked to ``dataset.root/JPEGImages`` when the
    dataset has one, else encoded from ``dataset.image``), ``ann_dir/train/<id>.png``
    = pseudo-masks, ``ann_dir/val/<id>.png`` = ground truth (``dataset.mask``);
    palette PNGs with values 0..C and 255. The snippet also goes to
    ``out_root/README.md``; ``export.json`` is written last.
    """
    pseudo_dir, out_root = Path(pseudo_dir), Path(out_root)
    _check_pseudo(pseudo_dir, ids_train)
    class_names = list(dataset.class_names)
    n_labels = len(class_names) + 1
    (out_root / MANIFEST).unlink(missing_ok=True)

    def put_image(image_id: str, split: str) -> tuple[int, int]:
        return _put_jpeg(dataset, image_id, out_root / "img_dir" / split / f"{image_id}.jpg", link)

    for image_id in ids_train:
        hw = put_image(image_id, "train")
        mask = read_mask(pseudo_dir / f"{image_id}.png")
        if mask.shape != hw:
            raise ValueError(
                f"{pseudo_dir / image_id}.png: size {mask.shape} differs from image {hw}"
            )
        bad = (mask >= n_labels) & (mask != 255)
        if bad.any():
            raise ValueError(
                f"{pseudo_dir / image_id}.png: label {int(mask[bad][0])} outside 0..{n_labels - 1}/255"
            )
        _copy_file(
            pseudo_dir / f"{image_id}.png", out_root / "ann_dir" / "train" / f"{image_id}.png"
        )
    has_mask = getattr(dataset, "has_mask", lambda image_id: True)
    ids_val = [i for i in ids_val if has_mask(i)]  # no ground truth, no val split
    for image_id in ids_val:
        hw = put_image(image_id, "val")
        mask = np.asarray(dataset.mask(image_id))
        if mask.shape != hw:
            raise ValueError(
                f"ground-truth mask of {image_id}: size {mask.shape} differs from image {hw}"
            )
        write_mask(out_root / "ann_dir" / "val" / f"{image_id}.png", mask)

    data_root = out_root.resolve()
    train_cfg = mmseg_dataset_config(data_root, "train", class_names)
    val_cfg = mmseg_dataset_config(data_root, "val", class_names)
    snippet = (
        "# mmsegmentation: pseudo-masks for training, ground truth for validation\n"
        f"train_dataloader = dict(dataset={train_cfg})\n"
        f"val_dataloader = dict(dataset={val_cfg})\n"
    )
    write_text(
        out_root / "README.md",
        "# Pseudo-masks in mmsegmentation layout\n\n"
        "Labels: 0 = background, 1..C = classes, 255 = ignore. Paste into your config:\n\n"
        f"```python\n{snippet}```\n",
    )
    write_json(
        out_root / MANIFEST,
        {
            "format": "mmseg",
            "n_train": len(ids_train),
            "n_val": len(ids_val),
            "classes": ["background", *class_names],
            "pseudo_dir": str(pseudo_dir.resolve()),
            "config": {"train": train_cfg, "val": val_cfg},
        },
    )
    return snippet
