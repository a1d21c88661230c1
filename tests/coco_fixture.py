"""A COCO 2014-layout copy of the generated demo world, for the COCO reader's tests and smoke runs.

:func:`make_coco_from_world` turns a world folder (VOC layout, :func:`generate_world`) into
``<coco_root>/{train2014,val2014}/COCO_<split>_<12 digits>.jpg`` and
``<coco_root>/annotations/instances_<split>.json``: one annotation per 4-connected region of
a class in the world's mask (its 255 bands and fragments belong to no annotation), the
world's 8 classes mapped onto their COCO categories. The annotations cycle through the
segmentation formats COCO uses (polygons traced along the pixel corners, which pycocotools
rasterises back exactly, compressed RLE, uncompressed RLE), and one region of the first
train image with two or more regions is a crowd region (``iscrowd: 1``, uncompressed RLE).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from pole_core.data.coco import COCO_CATEGORIES
from pole_core.data.voc import load_classes, read_split
from pole_core.io.png import read_mask

# The world's classes as COCO category ids.
WORLD_TO_COCO: dict[str, int] = {
    "aeroplane": 5,  # airplane
    "bird": 16,
    "boat": 9,
    "car": 3,
    "cat": 17,
    "bottle": 44,
    "tvmonitor": 72,  # tv
    "pottedplant": 64,  # potted plant
}
SPLITS: tuple[tuple[str, str], ...] = (("train", "train2014"), ("val", "val2014"))


def coco_id(split: str, number: int) -> str:
    return f"COCO_{split}_{number:012d}"


def corner_polygons(region: np.ndarray) -> list[list[float]]:
    """Outer outlines of a binary region through the pixel corners (COCO polygon format).

    cv2.findContours on the region upsampled 2x traces the boundary pixels' centres; mapping
    each to ``(coord + 1) // 2`` puts the vertices on the pixel corners of the original grid.
    """
    up = np.kron(region.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        pts = (c.reshape(-1, 2) + 1) // 2
        keep = np.ones(len(pts), dtype=bool)
        keep[1:] = (pts[1:] != pts[:-1]).any(axis=1)
        pts = pts[keep]
        if len(pts) > 1 and (pts[0] == pts[-1]).all():
            pts = pts[:-1]
        if len(pts) >= 3:
            polys.append(pts.reshape(-1).astype(float).tolist())
    return polys


def uncompressed_rle(region: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a 0-run)."""
    flat = np.asarray(region, dtype=bool).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(region.shape[0]), int(region.shape[1])], "counts": runs}


def compressed_rle(region: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _decode(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(seg, h, w))).astype(bool)
    if isinstance(seg["counts"], list):
        return mask_util.decode(mask_util.frPyObjects(seg, h, w)).astype(bool)
    return mask_util.decode(seg).astype(bool)


def make_coco_from_world(world_root: Path, coco_root: Path) -> dict[str, list[str]]:
    """Write the COCO-layout copy of the world at ``world_root`` under ``coco_root``.

    Returns the COCO ids per split (``train2014``, ``val2014``), in the world's split order.
    """
    world_root, coco_root = Path(world_root), Path(coco_root)
    names = load_classes(world_root).names
    unknown = [n for n in names if n not in WORLD_TO_COCO]
    if unknown:
        raise ValueError(f"{world_root}: no COCO category for world class {unknown[0]!r}")
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in COCO_CATEGORIES]
    out: dict[str, list[str]] = {}
    n_ann = 0
    crowd_done = False
    for world_split, split in SPLITS:
        images, annotations, ids = [], [], []
        for number, wid in enumerate(
            read_split(world_root / "ImageSets/Segmentation" / f"{world_split}.txt"), 1
        ):
            cid = coco_id(split, number)
            file_name = f"{cid}.jpg"
            (coco_root / split).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(world_root / "JPEGImages" / f"{wid}.jpg", coco_root / split / file_name)
            mask = read_mask(world_root / "SegmentationClass" / f"{wid}.png")
            h, w = mask.shape
            images.append({"id": number, "file_name": file_name, "height": h, "width": w})
            regions = []
            for value in np.unique(mask).tolist():
                if value in (0, 255):
                    continue
                n, comp = cv2.connectedComponents((mask == value).astype(np.uint8), connectivity=4)
                regions += [(value, comp == k) for k in range(1, n)]
            for r, (value, region) in enumerate(regions):
                crowd = (
                    split == "train2014"
                    and not crowd_done
                    and len(regions) >= 2
                    and r == len(regions) - 1
                )
                if crowd:
                    seg = uncompressed_rle(region)
                    crowd_done = True
                elif n_ann % 3 == 0:
                    seg = corner_polygons(region)
                    if not seg or not np.array_equal(_decode(seg, h, w), region):
                        seg = compressed_rle(region)  # holes or pinches: a polygon would differ
                elif n_ann % 3 == 1:
                    seg = compressed_rle(region)
                else:
                    seg = uncompressed_rle(region)
                n_ann += 1
                rle = mask_util.encode(np.asfortranarray(region.astype(np.uint8)))
                annotations.append(
                    {
                        "id": n_ann,
                        "image_id": number,
                        "category_id": WORLD_TO_COCO[names[value - 1]],
                        "segmentation": seg,
                        "area": float(mask_util.area(rle)),
                        "bbox": [float(x) for x in mask_util.toBbox(rle)],
                        "iscrowd": int(crowd),
                    }
                )
            ids.append(cid)
        doc = {
            "info": {"description": f"demo world as COCO {split}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        ann_path = coco_root / "annotations" / f"instances_{split}.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        ann_path.write_text(json.dumps(doc))
        out[split] = ids
    if not crowd_done:
        raise ValueError(f"{world_root}: no train image with two regions for the crowd region")
    return out
