"""Dense CRF labels (``cam_to_ir_label``) timed serially and over a process pool."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pole_core.cam.extract import iter_cams
from pole_core.device import resolve_device
from pole_core.io.atomic import write_json
from pole_core.io.cam_store import open_cams, read_cam
from pole_core.refine.crf import CRFParams, cam_to_ir_label

from .synthetic import build_demo_net, synthetic_dataset

# IRNet's confident-label thresholds (conf_fg_thres, conf_bg_thres); the CRF's cost does not
# depend on them.
IRNET_FG_THRESH = 0.30
IRNET_BG_THRESH = 0.05

# (image, cam, keys)
Item = tuple[np.ndarray, np.ndarray, np.ndarray]


def _bench_task(args: tuple[np.ndarray, np.ndarray, np.ndarray, float, float, CRFParams]) -> float:
    """Label one image; return the CPU seconds it took in this process."""
    image, cam, keys, fg_thresh, bg_thresh, params = args
    start = time.process_time()
    cam_to_ir_label(image, cam, keys, fg_thresh=fg_thresh, bg_thresh=bg_thresh, params=params)
    return time.process_time() - start


def load_bench_items(dataset: Any, ids: Sequence[str], cams_h5: str | os.PathLike) -> list[Item]:
    """(image, cam, keys) of ``ids`` in memory, so :func:`bench_crf` times the CRF, not the disk."""
    with open_cams(cams_h5) as f:
        return [(dataset.image(i), *read_cam(f, i)) for i in ids]


def _mp_context() -> str:
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def bench_crf(
    items: Sequence[Item],
    *,
    fg_thresh: float,
    bg_thresh: float,
    params: CRFParams,
    processes: int = 2,
    repeats: int = 1,
) -> dict[str, float]:
    """Time :func:`~pole_core.refine.crf.cam_to_ir_label` over ``items`` serially and with a pool.

    ``t1``: one process, in-process loop; ``t2``: a ``processes``-worker pool over
    images (pool start-up included, since a shard pays it too); efficiency =
    t1 / (processes · t2), 1.0 is perfect scaling. Wall time depends on what else
    the machine runs, so the CPU seconds spent on the CRFs (``cpu1`` serial,
    ``cpu2`` summed over workers) and the load average are reported too:
    ``cpu1 / cpu2`` near 1 means the pool itself adds no work, and a wall
    efficiency below it means the cores were busy elsewhere. Best of ``repeats``.
    """
    tasks = [(img, cam, keys, fg_thresh, bg_thresh, params) for img, cam, keys in items]
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


def bench_crf_stage(
    out_json: str | os.PathLike,
    *,
    n_images: int = 64,
    device: str = "auto",
    image_size: int = 64,
    processes: int = 2,
    repeats: int = 1,
    seed: int = 0,
) -> dict:
    """CRF timing (serial vs process pool, :func:`bench_crf`) on the demo net's CAMs.

    Its inputs are the demo net's CAMs (random init, stored precision) of the same synthetic
    images as ``cam_extract``; the CRF's cost does not depend on what the CAMs show. The CRF
    has the paper's terms (``CRFParams()``), the thresholds are IRNet's.
    """
    dataset = synthetic_dataset(n_images, image_size=image_size, seed=seed)
    net, net_note = build_demo_net(len(dataset.class_names), seed)
    dev = resolve_device(device)
    net = net.to(dev)
    items = [
        (dataset.image(image_id), cam.astype(np.float16).astype(np.float32), keys)
        for image_id, keys, cam, _ in iter_cams(net, dataset, dataset.ids(), device=dev)
    ]
    result = {
        "benchmark": "crf",
        "data": f"synthetic {image_size}x{image_size}",
        "cams_from": net_note,
        **bench_crf(
            items,
            fg_thresh=IRNET_FG_THRESH,
            bg_thresh=IRNET_BG_THRESH,
            params=CRFParams(),
            processes=processes,
            repeats=repeats,
        ),
    }
    write_json(out_json, result)
    return result
