"""The pipeline's one dense CRF, and the label maps built on it (IRNet ``cam_to_ir_label``).

:func:`dense_crf` runs mean-field inference of a fully connected CRF (a Gaussian and a
bilateral Potts kernel, pydensecrf) over a unary energy and returns the probabilities.
Its parameters are one frozen :class:`CRFParams`, whose defaults are the paper values of
the config schema's ``crf`` group. The unary comes from a hard label map
(:func:`label_unary`, confidence ``gt_prob``) or from class probabilities
(:func:`prob_unary`, the segmenter's DeepLab-style post-processing).

On top of it, with labels 0 = background and ``keys + 1`` = the image's classes:

* :func:`crf_refine_label`: one CRF over a label map (the random walk's final CRF);
* :func:`crf_refine_cam`: the CAM labelled against a constant background score
  (:func:`pole_core.cam.evaluate.cam_to_label`), then one CRF: the "CRF-refined CAM"
  whose mIoU the report quotes;
* :func:`cam_to_ir_label`: IRNet's confident labels the affinity net trains on: a CRF run
  with a high background score ``fg_thresh`` keeps only confident foreground, a run with
  a low one ``bg_thresh`` keeps only confident background, and everything the two runs
  disagree on becomes 255 (ignored).

:func:`write_labels` writes one of them (:func:`ir_label_fn`, :func:`refine_fn`) for a
shard of images, resumably, over a process pool (the CRF is single-threaded C++, so processes, not
threads, give the speed-up). pydensecrf needs C-contiguous arrays of the exact dtype
(uint8 image, float32 unary); every array handed to it goes through
``np.ascontiguousarray``.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from ..cam.evaluate import cam_to_label
from ..io.cam_store import open_cams, read_cam
from ..io.png import read_mask, write_mask

__all__ = [
    "CRFParams",
    "label_unary",
    "prob_unary",
    "dense_crf",
    "crf_refine_label",
    "crf_refine_cam",
    "cam_to_ir_label",
    "ir_label_fn",
    "refine_fn",
    "write_labels",
]


@dataclass(frozen=True)
class CRFParams:
    """The dense CRF's terms; field names are the keys of ``crf`` and ``random_walk.final_crf``.

    Defaults are the paper (IRNet) values, the schema defaults of those groups.
    ``gt_prob``: probability a hard label's unary gives its own class (label unaries only;
    :func:`prob_unary` does not use it). ``gauss_*``: the smoothness kernel (position
    only); ``bi_*``: the appearance kernel (position ``bi_sxy``, colour ``bi_srgb``).
    ``iters``: mean-field iterations.
    """

    gt_prob: float = 0.7
    gauss_sxy: float = 3
    gauss_compat: float = 3
    bi_sxy: float = 50
    bi_srgb: float = 5
    bi_compat: float = 10
    iters: int = 10


def label_unary(labels: np.ndarray, n_labels: int, *, gt_prob: float) -> np.ndarray:
    """Unary energy float32 [n_labels, H, W] of a hard label map H×W (values 0..n_labels-1).

    Each pixel's label gets probability ``gt_prob``, the others share the rest
    (pydensecrf ``unary_from_labels`` with ``zero_unsure=False`` as in IRNet, so label 0 is
    a real class, not "unknown").
    """
    labels = np.asarray(labels)
    if n_labels < 1:
        raise ValueError("label_unary: n_labels must be >= 1")
    if labels.ndim != 2:
        raise ValueError(f"label_unary: labels must be H×W, got shape {labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"label_unary: labels must lie in 0..{n_labels - 1}")
    if n_labels == 1:  # one class: every pixel is it, whatever gt_prob says
        return np.zeros((1, *labels.shape), dtype=np.float32)
    unary = unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False)
    return unary.reshape(n_labels, *labels.shape)


def prob_unary(probs: np.ndarray) -> np.ndarray:
    """Unary energy float32 [K, H, W] of class probabilities [K, H, W]: −log p, p clipped to 1e-5."""
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise ValueError(f"prob_unary: probabilities must be K×H×W, got shape {probs.shape}")
    return unary_from_softmax(probs).reshape(probs.shape)


def dense_crf(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Fully connected CRF over ``unary`` [K, H, W] on ``image`` H×W×3; returns Q float32 [K, H, W].

    Q is the mean-field marginal of every class at every pixel after ``params.iters``
    iterations; ``Q.argmax(0)`` is the label map. ``params.gt_prob`` is a property of the
    unary (:func:`label_unary`), not used here.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must be H×W×3 uint8, got shape {image.shape}")
    h, w = image.shape[:2]
    unary = np.asarray(unary)
    if unary.ndim != 3 or unary.shape[1:] != (h, w) or unary.shape[0] < 1:
        raise ValueError(f"dense_crf: unary {unary.shape} does not match image {(h, w)} as K×H×W")
    n_labels = unary.shape[0]
    if n_labels == 1:  # nothing to decide; pydensecrf is not needed
        return np.ones((1, h, w), dtype=np.float32)
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n_labels, -1), dtype=np.float32))
    d.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    d.addPairwiseBilateral(
        sxy=params.bi_sxy, srgb=params.bi_srgb, rgbim=image, compat=params.bi_compat
    )
    return np.asarray(d.inference(int(params.iters)), dtype=np.float32).reshape(n_labels, h, w)


def _label_lut(keys: np.ndarray) -> np.ndarray:
    """Map CAM channel index (0 = background) to label value (0, keys + 1)."""
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)


def crf_refine_label(
    image: np.ndarray, label: np.ndarray, keys: np.ndarray, *, params: CRFParams
) -> np.ndarray:
    """One CRF over a label map (0 bg, ``keys + 1``): edges snap to the image's colour edges.

    The unary is :func:`label_unary` over background + the keys; returns uint8 labels in
    the same values. Labels outside {0, keys + 1} are an error, not silently dropped.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"label size {label.shape} does not match image size {image.shape[:2]}")
    lut = _label_lut(keys)
    index = np.full(256, -1, dtype=np.int64)
    index[lut] = np.arange(lut.size)
    idx = index[label.astype(np.uint8)]
    if (idx < 0).any():
        bad = sorted(set(np.unique(label[idx < 0]).tolist()))
        raise ValueError(f"label values {bad} are not background or one of the keys + 1")
    unary = label_unary(idx, lut.size, gt_prob=params.gt_prob)
    return lut[dense_crf(image, unary, params).argmax(0)]


def _check_cam(image: np.ndarray, cam: np.ndarray, keys: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.shape[0]:
        raise ValueError(f"CAM shape {cam.shape} does not match {keys.shape[0]} keys")
    if cam.shape[1:] != image.shape[:2]:
        raise ValueError(f"CAM size {cam.shape[1:]} does not match image size {image.shape[:2]}")
    return keys


def crf_refine_cam(
    image: np.ndarray, cam: np.ndarray, keys: np.ndarray, *, bg_thresh: float, params: CRFParams
) -> np.ndarray:
    """CAM argmax against the constant background score ``bg_thresh``, then one CRF (0 bg, keys + 1).

    This is the "CRF-refined CAM" whose mIoU the report quotes; unlike
    :func:`cam_to_ir_label` it has no ignore region.
    """
    keys = _check_cam(image, cam, keys)
    return crf_refine_label(image, cam_to_label(cam, keys, bg_thresh), keys, params=params)


def cam_to_ir_label(
    image: np.ndarray,
    cam: np.ndarray,
    keys: np.ndarray,
    *,
    fg_thresh: float,
    bg_thresh: float,
    params: CRFParams,
) -> np.ndarray:
    """Confident CRF labels from a CAM, as IRNet ``cam_to_ir_label`` (0 bg, keys + 1, 255 uncertain).

    Two :func:`crf_refine_cam` runs: with background score ``fg_thresh`` (only strong CAM
    wins → confident foreground) and with ``bg_thresh`` (any CAM wins → what stays
    background is confident background). A pixel keeps the foreground class of the first
    run; it is background only where both runs say background; the rest (background in
    the first run, foreground in the second) is 255.
    """
    fg_conf = crf_refine_cam(image, cam, keys, bg_thresh=fg_thresh, params=params)
    bg_conf = crf_refine_cam(image, cam, keys, bg_thresh=bg_thresh, params=params)
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[(fg_conf == 0) & (bg_conf == 0)] = 0
    return conf


# --------------------------------------------------------------------------- shards

# image, cam, keys -> uint8 label map
LabelFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def ir_label_fn(*, fg_thresh: float, bg_thresh: float, params: CRFParams) -> LabelFn:
    """:func:`cam_to_ir_label` with its thresholds bound, for :func:`write_labels`."""
    return functools.partial(
        cam_to_ir_label, fg_thresh=fg_thresh, bg_thresh=bg_thresh, params=params
    )


def refine_fn(*, bg_thresh: float, params: CRFParams) -> LabelFn:
    """:func:`crf_refine_cam` with its threshold bound, for :func:`write_labels`."""
    return functools.partial(crf_refine_cam, bg_thresh=bg_thresh, params=params)


def _is_complete(path: Path) -> bool:
    """An existing label PNG that reads back whole (writes are atomic; this guards old files)."""
    if not path.is_file():
        return False
    try:
        read_mask(path)
    except ValueError:
        return False
    return True


# Per-worker state for the pool: the dataset travels once (fork: inherited),
# the HDF5 file is opened inside each worker (h5py handles must not cross a fork).
_WORKER: dict[str, Any] = {}


def _worker_init(dataset: Any, cams_h5: str, out_dir: str, label_fn: LabelFn) -> None:
    _WORKER.update(
        dataset=dataset, cams=open_cams(cams_h5), out_dir=Path(out_dir), label_fn=label_fn
    )


def _worker_run(image_id: str) -> str:
    w = _WORKER
    image = w["dataset"].image(image_id)
    cam, keys = read_cam(w["cams"], image_id)
    write_mask(w["out_dir"] / f"{image_id}.png", w["label_fn"](image, cam, keys))
    return image_id


def write_labels(
    dataset: Any,
    ids: Sequence[str],
    cams_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_fn: LabelFn,
    *,
    workers: int = 1,
    progress: bool = True,
    desc: str = "crf",
) -> dict[str, int]:
    """``out_dir/<id>.png`` = ``label_fn(image, cam, keys)`` for every id, skipping complete files.

    Each PNG is written atomically, so a killed shard resumes where it stopped.
    ``workers > 1`` spreads images over a process pool (``label_fn`` must pickle where
    processes spawn). Returns ``{"done", "skipped"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not _is_complete(out_dir / f"{i}.png")]
    skipped = len(ids) - len(todo)
    bar = _progress(len(todo), progress, desc=desc)
    if workers <= 1 or len(todo) < 2:
        _worker_init(dataset, str(cams_h5), str(out_dir), label_fn)
        try:
            for image_id in todo:
                _worker_run(image_id)
                bar(1)
        finally:
            _WORKER.pop("cams").close()
            _WORKER.clear()
    else:
        chunk = max(1, len(todo) // (workers * 8))
        with mp.get_context(_mp_context()).Pool(
            workers,
            initializer=_worker_init,
            initargs=(dataset, str(cams_h5), str(out_dir), label_fn),
        ) as pool:
            for _ in pool.imap_unordered(_worker_run, todo, chunksize=chunk):
                bar(1)
    bar(None)
    return {"done": len(todo), "skipped": skipped}


def _mp_context() -> str:
    """fork where available (no pickling of the dataset, fast start), spawn elsewhere."""
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _progress(total: int, enabled: bool, desc: str) -> Callable[[int | None], None]:
    """A tqdm bar when enabled, else a no-op; call with n to advance, None to close."""
    if not enabled or total == 0:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def step(n: int | None) -> None:
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return step
