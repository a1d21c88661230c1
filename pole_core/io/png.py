"""Palette PNG masks in the PASCAL VOC convention (0 background, 1..C classes, 255 ignore)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_path


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), as uint8 [n, 3]; index 255 is (224, 224, 192)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE = voc_palette().flatten().tolist()


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a label map (H×W, values 0..C or 255) as a VOC palette PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values must lie in 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 H×W; palette indices are taken as labels, not colours.

    16-bit grayscale label PNGs (as some converters write) are accepted when their
    values fit 0..255.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" or img.mode == "L":
                arr = np.asarray(img)
            elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.int64)
                if arr.size and arr.max() > 255:
                    raise ValueError(f"{path}: 16-bit mask has values above 255")
            else:
                raise ValueError(
                    f"{path}: mask PNG must be palette or grayscale, got mode {img.mode}"
                )
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: unreadable mask ({err})") from None
    return arr.astype(np.uint8)
