"""Report figures: overlay grid, CAM threshold curves, POLE prompt histogram.

Drawn on ``matplotlib.figure.Figure`` objects (Agg canvas) rather than pyplot,
so no global backend or figure state is touched and a worker without a
display works. Figure sizes are fixed (no tight bounding box), which makes the
PNG size predictable and the output deterministic for the same inputs. Every
PNG is written through ``atomic_path``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..io.atomic import atomic_path
from ..io.png import voc_palette

_PALETTE = voc_palette()
_NAME_COLOUR = "#e6550d"
_TOKEN_COLOUR = "#3182bd"
TITLE_IN = 0.3  # inches of column-title band above the overlay grid


def _save(fig: Figure, out_png: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, metadata={"Software": None})


def colour_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend VOC palette colours onto the image where the label is not background (255 = cream)."""
    labels = np.clip(np.asarray(labels).astype(np.int64), 0, 255).astype(np.uint8)
    if labels.shape != image.shape[:2]:
        labels = cv2.resize(labels, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    colours = _PALETTE[labels].astype(np.float32)
    out = image.astype(np.float32)
    fg = (labels != 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * colours, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colour_heat(
    image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blend a heat map (H×W, or k×H×W reduced by max over classes) onto the image."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim == 3:
        heat = heat.max(0) if heat.shape[0] else np.zeros(heat.shape[1:], np.float32)
    if heat.shape != image.shape[:2]:
        heat = cv2.resize(heat, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    heat = np.nan_to_num(heat)
    top = float(heat.max()) if heat.size else 0.0
    heat = heat / top if top > 1.0 else np.clip(heat, 0.0, 1.0)
    rgb = colormaps[cmap](heat)[..., :3] * 255.0
    out = (1 - alpha) * image.astype(np.float32) + alpha * rgb
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _render(image: np.ndarray, value: Any) -> np.ndarray | None:
    """An RGB cell for one column value: label map, heat map, RGB image, or None."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.ndim != 2:
            raise ValueError(f"overlay_grid: label map must be 2-D, got shape {arr.shape}")
        return colour_labels(image, arr)
    return colour_heat(image, arr)


def overlay_grid(
    dataset: Any,
    ids: Sequence[str],
    columns: Mapping[str, Callable[[str], np.ndarray | None]],
    out_png: str | os.PathLike,
    *,
    n: int = 6,
    cell_in: float = 1.6,
    dpi: int = 100,
) -> None:
    """One PNG: a row per image (first ``n`` ids), the image first, then one column per entry.

    A column function returns an integer label map (palette blend), a float
    heat map H×W or k×H×W (max over classes, colormap blend), or None (drawn as
    an empty cell: e.g. a stage that has not run). Size: (1 + len(columns)) ·
    cell_in · dpi by n · cell_in · dpi + a title band of TITLE_IN · dpi pixels.
    """
    rows = list(ids)[:n]
    if not rows:
        raise ValueError("overlay_grid: no image ids to draw")
    names = ["image", *columns]
    ncol, nrow = len(names), len(rows)
    height = nrow * cell_in + TITLE_IN
    fig = Figure(figsize=(ncol * cell_in, height), dpi=dpi)
    ch = cell_in / height  # one cell's height as a figure fraction
    for c, name in enumerate(names):
        fig.text(
            (c + 0.5) / ncol, 1 - TITLE_IN / 2 / height, name, ha="center", va="center", fontsize=8
        )
    for r, image_id in enumerate(rows):
        image = np.asarray(dataset.image(image_id))
        for c, name in enumerate(names):
            ax = fig.add_axes(
                (
                    c / ncol + 0.005,
                    1 - TITLE_IN / height - (r + 1) * ch + 0.005 * ch,
                    0.99 / ncol,
                    0.99 * ch,
                )
            )
            ax.set_axis_off()
            cell = image if c == 0 else _render(image, columns[name](image_id))
            if cell is None:
                ax.imshow(np.full((*image.shape[:2], 3), 200, np.uint8), interpolation="nearest")
                ax.text(
                    0.5, 0.5, "n/a", transform=ax.transAxes, ha="center", va="center", fontsize=8
                )
            else:
                ax.imshow(cell, interpolation="nearest")
            if c == 0:
                ax.text(
                    0.02,
                    0.98,
                    str(image_id),
                    transform=ax.transAxes,
                    ha="left",
                    va="top",
                    fontsize=6,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0},
                )
    _save(fig, out_png)


def threshold_curve(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    out_png: str | os.PathLike,
    *,
    title: str = "CAM mIoU vs background threshold",
    dpi: int = 100,
) -> None:
    """mIoU (%) against threshold, one line per curve, its best point marked (600×400 px at dpi 100)."""
    fig = Figure(figsize=(6, 4), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for name, points in curves.items():
        pts = sorted((float(p["threshold"]), float(p["miou"])) for p in points)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        (line,) = ax.plot(xs, ys, marker=".", label=name)
        best = int(np.nanargmax(ys))
        ax.plot([xs[best]], [ys[best]], marker="o", ms=8, mfc="none", color=line.get_color())
        line.set_label(f"{name} (best {ys[best]:.1f} @ {xs[best]:g})")
    ax.set_xlabel("threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    _save(fig, out_png)


def _same_word(a: str, b: str) -> bool:
    return a.lower().replace(" ", "").replace("_", "") == b.lower().replace(" ", "").replace(
        "_", ""
    )


def prompt_histogram(
    histogram: Mapping[str, Mapping[str, int]],
    out_png: str | os.PathLike,
    dataset_names: Mapping[str, str],
    *,
    top: int = 8,
    dpi: int = 100,
) -> None:
    """Bars of chosen tokens per class (one panel per class), the dataset name highlighted.

    The dataset name always gets a bar, at 0 when POLE never chose it: that
    empty bar is the point of the method. Beyond ``top`` tokens the rest are
    pooled as "(other)". Size: min(4, C) · 3.2 in by ceil(C / 4) · 2.4 in.
    """
    classes = list(histogram)
    ncols = max(1, min(4, len(classes)))
    nrows = max(1, math.ceil(len(classes) / ncols))
    fig = Figure(figsize=(ncols * 3.2, nrows * 2.4), dpi=dpi, layout="constrained")
    if not classes:
        fig.text(0.5, 0.5, "no prompt choices", ha="center", va="center")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(classes):
            ax.set_axis_off()
            continue
        cls = classes[i]
        name = dataset_names.get(cls, cls)
        counts = {str(t): int(c) for t, c in (histogram[cls] or {}).items()}
        if not any(_same_word(t, name) for t in counts):
            counts[name] = 0
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown, rest = items[:top], items[top:]
        if rest and not any(_same_word(t, name) for t, _ in shown):
            keep = next(kv for kv in rest if _same_word(kv[0], name))
            rest = [kv for kv in rest if kv is not keep]
            shown = shown[:-1] + [keep]
            rest.append(items[top - 1])
        if rest:
            shown.append(("(other)", sum(c for _, c in rest)))
        labels = [t for t, _ in shown][::-1]
        values = [c for _, c in shown][::-1]
        colours = [_NAME_COLOUR if _same_word(t, name) else _TOKEN_COLOUR for t in labels]
        ax.barh(range(len(labels)), values, color=colours)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for tick, colour in zip(ax.get_yticklabels(), colours, strict=True):
            if colour == _NAME_COLOUR:  # visible even when its bar has zero length
                tick.set_color(_NAME_COLOUR)
                tick.set_fontweight("bold")
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(cls, fontsize=9)
    if classes:
        fig.legend(
            handles=[
                Patch(color=_NAME_COLOUR, label="dataset name"),
                Patch(color=_TOKEN_COLOUR, label="other tokens"),
            ],
            loc="outside lower center",
            ncols=2,
            fontsize=7,
        )
    _save(fig, out_png)
