"""Dense CRF refinement of CAMs (IRNet ``cam_to_ir_label`` and CRF-refined CAM evaluation).

Two uses:

* :func:`cam_to_label` turns a CAM into the *confident* label map the affinity
  net trains on: a CRF run with a high background score (0.30) keeps only
  confident foreground, a run with a low one (0.05) keeps only confident
  background, and everything the two runs disagree on becomes 255 (ignored).
* :func:`crf_refine_cam` is the plain "CAM argmax with a background threshold,
  then CRF" used to report the mIoU of CRF-refined CAMs.

pydensecrf needs C-contiguous arrays of the exact dtype (uint8 image, float32
unary); every array handed to it goes through ``np.ascontiguousarray``.
The shard runner and :func:`bench_crf` spread images over a process pool
(the CRF is single-threaded C++, so processes, not threads, give the speed-up).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from ..io.cam_store import open_cams, read_cam
from ..io.png import read_mask, write_mask

__all__ = [
    "crf_inference",
    "cam_to_label",
    "crf_refine_cam",
    "crf_refine_label",
    "run_crf_shard",
    "load_bench_items",
    "bench_crf",
]


def crf_inference(
    image: np.ndarray,
    labels_or_probs: np.ndarray,
    n_labels: int,
    *,
    gt_prob: float = 0.7,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bi_sxy: float = 50,
    bi_srgb: float = 5,
    bi_compat: float = 10,
    iters: int = 10,
) -> np.ndarray:
    """Run a fully connected CRF and return the uint8 argmax label map (H×W).

    ``labels_or_probs`` is either a hard label map H×W with values 0..n_labels-1
    (unary from labels with confidence ``gt_prob``, ``zero_unsure=False`` as in
    IRNet, so label 0 is a real class, not "unknown") or class probabilities
    [n_labels, H, W] (unary = -log p).
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"crf_inference: image must be H×W×3 uint8, got shape {image.shape}")
    h, w = image.shape[:2]
    arr = np.asarray(labels_or_probs)
    if n_labels < 1:
        raise ValueError("crf_inference: n_labels must be >= 1")
    if n_labels == 1:  # nothing to decide; pydensecrf is not needed
        return np.zeros((h, w), dtype=np.uint8)
    if arr.ndim == 2:
        if arr.shape != (h, w):
            raise ValueError(f"crf_inference: labels {arr.shape} do not match image {(h, w)}")
        labels = np.ascontiguousarray(arr, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(f"crf_inference: labels must lie in 0..{n_labels - 1}")
        unary = unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False)
    elif arr.ndim == 3:
        if arr.shape != (n_labels, h, w):
            raise ValueError(
                f"crf_inference: probabilities {arr.shape} do not match {(n_labels, h, w)}"
            )
        unary = unary_from_softmax(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        raise ValueError(f"crf_inference: expected H×W labels or K×H×W probs, got {arr.shape}")

    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=image, compat=bi_compat)
    q = np.asarray(d.inference(int(iters)), dtype=np.float32).reshape(n_labels, h, w)
    return np.argmax(q, axis=0).astype(np.uint8)


def _label_lut(keys: np.ndarray) -> np.ndarray:
    """Map CAM channel index (0 = background) to label value (0, keys + 1)."""
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)


def _argmax_with_bg(cam: np.ndarray, bg_score: float) -> np.ndarray:
    """Argmax over [constant background score, cam channels]; 0 = background."""
    padded = np.concatenate([np.full((1, *cam.shape[1:]), bg_score, dtype=np.float32), cam])
    return np.argmax(padded, axis=0)


def _check_cam(
    image: np.ndarray, cam: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.shape[0]:
        raise ValueError(f"CAM shape {cam.shape} does not match {keys.shape[0]} keys")
    if cam.shape[1:] != image.shape[:2]:
        raise ValueError(f"CAM size {cam.shape[1:]} does not match image size {image.shape[:2]}")
    return cam, keys


def cam_to_label(
    image: np.ndarray,
    cam: np.ndarray,
    keys: np.ndarray,
    *,
    fg_thresh: float = 0.30,
    bg_thresh: float = 0.05,
    **crf: Any,
) -> np.ndarray:
    """Confident CRF labels from a CAM, as IRNet ``cam_to_ir_label`` (0 bg, 1..C, 255 uncertain).

    Two CRF runs: with background score ``fg_thresh`` (only strong CAM wins →
    confident foreground) and with ``bg_thresh`` (any CAM wins → what stays
    background is confident background). A pixel keeps the foreground class of
    the first run; it is background only where both runs say background; the
    rest (background in the first run, foreground in the second) is 255.
    ``crf``: keyword arguments of :func:`crf_inference` (its defaults are the paper's).
    """
    cam, keys = _check_cam(image, cam, keys)
    if keys.size == 0:
        return np.zeros(image.shape[:2], dtype=np.uint8)
    fg_conf = _crf_to_label(image, _argmax_with_bg(cam, fg_thresh), keys, crf)
    bg_conf = _crf_to_label(image, _argmax_with_bg(cam, bg_thresh), keys, crf)
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[(fg_conf == 0) & (bg_conf == 0)] = 0
    return conf


def crf_refine_cam(
    image: np.ndarray, cam: np.ndarray, keys: np.ndarray, bg_thresh: float = 0.15, **crf: Any
) -> np.ndarray:
    """CAM argmax against a constant background score, then one CRF (0 bg, 1..C).

    This is the "CRF-refined CAM" whose mIoU the report quotes; unlike
    :func:`cam_to_label` it has no ignore region. ``crf``: keyword arguments of
    :func:`crf_inference`.
    """
    cam, keys = _check_cam(image, cam, keys)
    return _crf_to_label(image, _argmax_with_bg(cam, bg_thresh), keys, crf)


def _crf_to_label(
    image: np.ndarray, index: np.ndarray, keys: np.ndarray, crf: dict[str, Any]
) -> np.ndarray:
    """CRF over a channel-index map (0 bg, c = keys[c-1]), returned as label values (0, keys + 1)."""
    if keys.size == 0:
        return np.zeros(image.shape[:2], dtype=np.uint8)
    return _label_lut(keys)[crf_inference(image, index, keys.size + 1, **crf)]


def crf_refine_label(
    image: np.ndarray, label: np.ndarray, keys: np.ndarray, **crf: Any
) -> np.ndarray:
    """One CRF over a label map (0 bg, ``keys + 1``): edges snap to the image's colour edges.

    ``crf``: the keyword arguments of :func:`crf_inference` (its defaults are the
    paper's). Used on the random-walk pseudo-masks when ``random_walk.crf.enabled``;
    labels outside {0, keys + 1} are an error, not silently dropped.
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
    return _crf_to_label(image, idx, keys, crf)


# --------------------------------------------------------------------------- shards

_CRF_KEYS = ("gt_prob", "gauss_sxy", "gauss_compat", "bi_sxy", "bi_srgb", "bi_compat", "iters")


def _label_one(
    image: np.ndarray, cam: np.ndarray, keys: np.ndarray, mode: str, params: dict[str, Any]
) -> np.ndarray:
    crf = {k: params[k] for k in _CRF_KEYS if k in params}
    if mode == "ir_label":
        return cam_to_label(
            image, cam, keys, fg_thresh=params["fg_thresh"], bg_thresh=params["bg_thresh"], **crf
        )
    if mode == "refine":
        return crf_refine_cam(image, cam, keys, params["cam_bg_thresh"], **crf)
    raise ValueError(f"run_crf_shard: mode must be 'ir_label' or 'refine', got {mode!r}")


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


def _worker_init(dataset: Any, cams_h5: str, out_dir: str, mode: str, params: dict) -> None:
    _WORKER.update(
        dataset=dataset, cams=open_cams(cams_h5), out_dir=Path(out_dir), mode=mode, params=params
    )


def _worker_run(image_id: str) -> str:
    w = _WORKER
    image = w["dataset"].image(image_id)
    cam, keys = read_cam(w["cams"], image_id)
    label = _label_one(image, cam, keys, w["mode"], w["params"])
    write_mask(w["out_dir"] / f"{image_id}.png", label)
    return image_id


def run_crf_shard(
    dataset: Any,
    ids: Sequence[str],
    cams_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mode: str = "ir_label",
    fg_thresh: float = 0.30,
    bg_thresh: float = 0.05,
    cam_bg_thresh: float = 0.15,
    gt_prob: float = 0.7,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bi_sxy: float = 50,
    bi_srgb: float = 5,
    bi_compat: float = 10,
    iters: int = 10,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``out_dir/<id>.png`` for every id (CRF labels), skipping files already complete.

    ``mode="ir_label"`` writes :func:`cam_to_label` (training labels for the
    affinity net, 255 = uncertain); ``mode="refine"`` writes
    :func:`crf_refine_cam` with ``cam_bg_thresh``. Each PNG is written
    atomically, so a killed shard resumes where it stopped. ``workers > 1``
    spreads images over a process pool. Returns ``{"done", "skipped"}``.
    """
    if mode not in ("ir_label", "refine"):
        raise ValueError(f"run_crf_shard: mode must be 'ir_label' or 'refine', got {mode!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(
        fg_thresh=fg_thresh,
        bg_thresh=bg_thresh,
        cam_bg_thresh=cam_bg_thresh,
        gt_prob=gt_prob,
        gauss_sxy=gauss_sxy,
        gauss_compat=gauss_compat,
        bi_sxy=bi_sxy,
        bi_srgb=bi_srgb,
        bi_compat=bi_compat,
        iters=iters,
    )
    todo = [i for i in ids if not _is_complete(out_dir / f"{i}.png")]
    skipped = len(ids) - len(todo)
    bar = _progress(len(todo), progress, desc=f"crf[{mode}]")
    if workers <= 1 or len(todo) < 2:
        _worker_init(dataset, str(cams_h5), str(out_dir), mode, params)
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
            initargs=(dataset, str(cams_h5), str(out_dir), mode, params),
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


# --------------------------------------------------------------------------- benchmark


def _bench_task(args: tuple[np.ndarray, np.ndarray, np.ndarray, dict]) -> float:
    """Label one image; return the CPU seconds it took in this process."""
    image, cam, keys, params = args
    start = time.process_time()
    cam_to_label(image, cam, keys, **params)
    return time.process_time() - start


def load_bench_items(
    dataset: Any, ids: Sequence[str], cams_h5: str | os.PathLike
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, cam, keys) of ``ids`` in memory, so :func:`bench_crf` times the CRF, not the disk."""
    with open_cams(cams_h5) as f:
        return [(dataset.image(i), *read_cam(f, i)) for i in ids]


def bench_crf(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    processes: int = 2,
    repeats: int = 1,
    **params: Any,
) -> dict[str, float]:
    """Time :func:`cam_to_label` over ``items`` (image, cam, keys) serially and with a pool.

    ``t1``: one process, in-process loop; ``t2``: a ``processes``-worker pool over
    images (pool start-up included, since a shard pays it too); efficiency =
    t1 / (processes · t2), 1.0 is perfect scaling. Wall time depends on what else
    the machine runs, so the CPU seconds spent on the CRFs (``cpu1`` serial,
    ``cpu2`` summed over workers) and the load average are reported too:
    ``cpu1 / cpu2`` near 1 means the pool itself adds no work, and a wall
    efficiency below it means the cores were busy elsewhere. Best of ``repeats``.
    """
    tasks = [(img, cam, keys, params) for img, cam, keys in items]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t1 = t2 = cpu1 = cpu2 = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        cpu = sum(_bench_task(task) for task in tasks)
        t1, cpu1 = min(t1, time.perf_counter() - start), min(cpu1, cpu)

        start = time.perf_counter()
        chunk = max(1, len(tasks) // (processes * 8))
        with mp.get_context(_mp_context()).Pool(processes) as pool:
            cpu = sum(pool.imap_unordered(_bench_task, tasks, chunksize=chunk))
        t2, cpu2 = min(t2, time.perf_counter() - start), min(cpu2, cpu)
    return {
        "n_images": len(tasks),
        "processes": processes,
        "t1": round(t1, 4),
        "t2": round(t2, 4),
        "efficiency": round(t1 / (processes * t2), 4),
        "cpu1": round(cpu1, 4),
        "cpu2": round(cpu2, 4),
        "load_avg": round(load, 2),
    }
