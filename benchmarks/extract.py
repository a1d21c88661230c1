"""CAM extraction: IRNet's per-image loop against the batched ``pole_core.cam.extract``.

:func:`iter_cams_reference` / :func:`extract_cams_reference` are the per-image loop of
IRNet/CLIMS ``make_cam`` (batch 1, one forward per scale, post-processing per image): the
speed baseline of :func:`bench_cam_extract` and the equivalence oracle of
``tests/test_extract.py``. They do the arithmetic that :mod:`pole_core.cam.extract`'s
module docstring describes, with its :func:`~pole_core.cam.extract.rescale_images`, so
both see the same pixels. :func:`extraction_flops_per_image` and :func:`conv_peak_gflops`
give the roofline the benchmark reports.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pole_core.cam.extract import (
    DEFAULT_SCALES,
    EPS,
    CamItem,
    _check_image,
    _default_attrs,
    _device_for,
    extract_cams,
    image_keys,
    iter_cams,
    rescale_images,
    strided_size,
    strided_up_size,
)
from pole_core.device import resolve_device
from pole_core.io.atomic import write_json
from pole_core.io.cam_store import CamWriter, open_cams

from .synthetic import build_demo_net, synthetic_dataset

# --------------------------------------------------------------------------- reference loop


def iter_cams_reference(
    net: torch.nn.Module,
    dataset: Any,
    ids: Sequence[str],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: torch.device | str = "cpu",
) -> Iterator[CamItem]:
    """IRNet/CLIMS ``make_cam`` loop, one image at a time; yields float32 maps (no storage)."""
    device = _device_for(net, device)
    stride = int(net.stride)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for image_id in ids:
                image = _check_image(image_id, dataset.image(image_id))
                size = image.shape[:2]
                keys = image_keys(dataset.labels(image_id))
                img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
                img = img.float().div_(255.0)
                outputs = []
                for s in scales:
                    x = rescale_images(img, s)
                    if flip:
                        x = torch.cat([x, x.flip(-1)], 0)
                    cam = F.relu(net.cam(x.to(device)))
                    outputs.append(cam[0] + cam[1].flip(-1) if flip else cam[0])
                s4 = strided_size(size, 4)
                up = strided_up_size(size, stride)
                strided_cam = torch.sum(
                    torch.stack(
                        [
                            F.interpolate(o[None], s4, mode="bilinear", align_corners=False)[0]
                            for o in outputs
                        ]
                    ),
                    0,
                )
                highres = [
                    F.interpolate(o[:, None], up, mode="bilinear", align_corners=False)
                    for o in outputs
                ]
                highres = torch.sum(torch.stack(highres, 0), 0)[:, 0, : size[0], : size[1]]
                # numpy post-processing, per image
                strided_np = strided_cam.cpu().numpy()[keys]
                strided_np /= strided_np.max(axis=(1, 2), keepdims=True, initial=0.0) + EPS
                highres_np = highres.cpu().numpy()[keys]
                highres_np /= highres_np.max(axis=(1, 2), keepdims=True, initial=0.0) + EPS
                yield image_id, keys, highres_np, strided_np
    finally:
        net.train(was_training)


def extract_cams_reference(
    net: torch.nn.Module,
    dataset: Any,
    ids: Sequence[str],
    out_h5: str | os.PathLike,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    store_stride4: bool = True,
    progress: bool = False,
) -> dict:
    """Write CAMs with the per-image IRNet loop; the baseline for the benchmark and tests."""
    t0 = time.perf_counter()
    all_attrs = {**_default_attrs(net, dataset, scales, flip), **(attrs or {})}
    n = 0
    with CamWriter(out_h5, all_attrs) as writer:
        items = iter_cams_reference(net, dataset, ids, scales=scales, flip=flip, device=device)
        for image_id, keys, cam, cam_s4 in tqdm(
            items, total=len(ids), disable=not progress, desc="cams(ref)"
        ):
            writer.add(image_id, cam, keys, cam_s4 if store_stride4 else None)
            n += 1
    seconds = time.perf_counter() - t0
    return {
        "n_images": n,
        "seconds": round(seconds, 4),
        "images_per_s": round(n / seconds, 3) if seconds else None,
        "device": str(_device_for(net, device)),
    }


# --------------------------------------------------------------------------- benchmark


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _load_dataset(data_root: str | None, split: str, n_images: int, image_size: int, seed: int):
    if data_root is None:
        ds = synthetic_dataset(n_images, image_size=image_size, seed=seed)
        return ds, ds.ids(), f"synthetic {image_size}x{image_size}"
    from pole_core.data.voc import VOCDataset

    ds = VOCDataset(data_root)
    return ds, ds.ids(split)[:n_images], f"{data_root} ({split})"


def _max_stored_diff(a: str | os.PathLike, b: str | os.PathLike) -> float:
    """Largest |a-b| over the float16 ``cam`` and ``cam_s4`` arrays of two CAM stores."""
    worst = 0.0
    with open_cams(a) as fa, open_cams(b) as fb:
        if sorted(fa.keys()) != sorted(fb.keys()):
            raise AssertionError("CAM stores hold different image ids")
        for image_id in fa:
            if not np.array_equal(fa[image_id]["keys"][()], fb[image_id]["keys"][()]):
                raise AssertionError(f"{image_id}: keys differ")
            for name in ("cam", "cam_s4"):
                x = fa[image_id][name][()].astype(np.float32)
                y = fb[image_id][name][()].astype(np.float32)
                if x.size:
                    worst = max(worst, float(np.abs(x - y).max()))
    return worst


def extraction_flops_per_image(
    net: nn.Module, size: tuple[int, int], scales: Sequence[float], flip: bool
) -> int:
    """Floating-point operations of the CAM forwards one image needs (all scales and flips).

    Counted by ``torch.utils.flop_counter`` (convolutions and matmuls): the work both the
    reference loop and the batched path must do, whatever their batching.
    """
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(net.parameters()).device
    x = torch.zeros(1, 3, *size, device=dev)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for s in scales:
            xs = rescale_images(x, s)
            net.cam(torch.cat([xs, xs.flip(-1)]) if flip else xs)
    return int(counter.get_total_flops())


def conv_peak_gflops(device: torch.device, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a few large 3×3 convolutions: what this machine can reach.

    The bound for any extraction speed-up: a path that runs its convolutions at this rate
    can be at most ``peak / reference rate`` times faster than the reference. Several
    shapes, best of ``repeats`` each, so a noisy run underestimates the peak less.
    """
    from torch.utils.flop_counter import FlopCounterMode

    best_rate = 0.0
    for c, size, batch in ((256, 32, 16), (128, 64, 16), (64, 64, 32)):
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device).eval()
        x = torch.randn(batch, c, size, size, device=device)
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                conv(x)
            flops = counter.get_total_flops()
            conv(x)  # warm-up
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                conv(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best_rate = max(best_rate, flops / (time.perf_counter() - t) / 1e9)
    return best_rate


def bench_cam_extract(
    out_json: str | os.PathLike,
    *,
    n_images: int = 64,
    device: str = "auto",
    image_size: int = 64,
    n_classes: int = 10,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    batch_size: int = 32,
    workers: int = 0,
    data_root: str | None = None,
    split: str = "train",
    seed: int = 0,
    repeats: int = 3,
    threads: int | None = None,
    backbone: str = "mini",
) -> dict:
    """Time the IRNet per-image loop against batched extraction on the same net and images.

    Both write a CAM store (so storage cost is in both timings), after a warm-up on a few
    images. The fp32 difference is measured on the maps before float16 storage (untimed
    pass); the stored float16 arrays are compared too. Timings are the best of ``repeats``
    alternating runs; wall and process CPU time are both reported, since on a shared
    machine the wall time of many small parallel regions (the reference) suffers most.
    """
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    dataset, ids, data_note = _load_dataset(data_root, split, n_images, image_size, seed)
    if data_root is not None:
        n_classes = len(dataset.class_names)
    net, net_note = build_demo_net(n_classes, seed, backbone)
    net = net.to(dev)
    common = {"scales": scales, "flip": flip, "device": dev}
    ours_kw = {"batch_size": batch_size, "workers": workers, **common}

    with tempfile.TemporaryDirectory(prefix="bench_cams_") as tmp:
        ref_h5, ours_h5 = Path(tmp, "ref.h5"), Path(tmp, "ours.h5")
        warm = ids[: min(len(ids), 4)]
        extract_cams_reference(net, dataset, warm, ref_h5, **common)
        extract_cams(net, dataset, warm, ours_h5, progress=False, **ours_kw)

        runs: dict[str, list[tuple[float, float]]] = {"reference": [], "ours": []}
        for _ in range(max(1, repeats)):  # alternate, so load changes hit both alike
            runs["reference"].append(
                _timed(lambda: extract_cams_reference(net, dataset, ids, ref_h5, **common))
            )
            runs["ours"].append(
                _timed(lambda: extract_cams(net, dataset, ids, ours_h5, progress=False, **ours_kw))
            )
        diff_fp16 = _max_stored_diff(ref_h5, ours_h5)
        # For scale: our path under CPU bfloat16 autocast (AMX/AVX-512 BF16 where present).
        # Not a pipeline setting: its CAMs are outside the fp32 tolerance (see the JSON).
        t_bf16 = None
        if dev.type == "cpu":
            bf16_h5 = Path(tmp, "bf16.h5")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                extract_cams(net, dataset, warm, bf16_h5, progress=False, **ours_kw)
                t_bf16 = min(
                    _timed(
                        lambda: extract_cams(net, dataset, ids, bf16_h5, progress=False, **ours_kw)
                    )[0]
                    for _ in range(max(1, repeats))
                )
            diff_bf16 = _max_stored_diff(ref_h5, bf16_h5)

    amp_note = "AMP (float16 autocast)" if dev.type == "cuda" else "fp32 (no autocast on CPU)"
    diff_fp32 = 0.0
    ours = {
        item[0]: item
        for item in iter_cams(net, dataset, ids, batch_size=batch_size, amp=False, **common)
    }
    for image_id, keys, cam, cam_s4 in iter_cams_reference(net, dataset, ids, **common):
        _, keys_b, cam_b, cam_s4_b = ours.pop(image_id)
        if not np.array_equal(keys, keys_b):
            raise AssertionError(
                f"{image_id}: keys differ between reference and batched extraction"
            )
        if cam.size:
            diff_fp32 = max(
                diff_fp32, float(np.abs(cam - cam_b).max()), float(np.abs(cam_s4 - cam_s4_b).max())
            )
    if ours:
        raise AssertionError(f"batched extraction produced extra ids: {sorted(ours)[:5]}")

    t_reference = min(w for w, _ in runs["reference"])
    t_ours = min(w for w, _ in runs["ours"])
    # Roofline: both paths do the same convolutions; how close each runs to the machine's
    # conv peak bounds what any batching can gain here.
    flops = extraction_flops_per_image(net, dataset.image_size(ids[0]), scales, flip)
    peak = conv_peak_gflops(dev)
    gflops_ref = flops * len(ids) / t_reference / 1e9
    gflops_ours = flops * len(ids) / t_ours / 1e9
    cpu_reference = min(c for _, c in runs["reference"])
    cpu_ours = min(c for _, c in runs["ours"])
    result: dict[str, Any] = {
        "benchmark": "cam_extract",
        "n_images": len(ids),
        "data": data_note,
        "net": net_note,
        "net_stride": int(net.stride),
        "n_classes": n_classes,
        "scales": [float(s) for s in scales],
        "flip": flip,
        "batch_size": batch_size,
        "workers": workers,
        "t_reference_s": round(t_reference, 4),
        "t_ours_s": round(t_ours, 4),
        "speedup": round(t_reference / t_ours, 3),
        "cpu_reference_s": round(cpu_reference, 4),
        "cpu_ours_s": round(cpu_ours, 4),
        "speedup_cpu_time": round(cpu_reference / cpu_ours, 3),
        "runs_wall_cpu_s": {k: [[round(w, 4), round(c, 4)] for w, c in v] for k, v in runs.items()},
        "images_per_s_reference": round(len(ids) / t_reference, 2),
        "images_per_s_ours": round(len(ids) / t_ours, 2),
        "gflop_per_image": round(flops / 1e9, 4),
        "gflops_reference": round(gflops_ref, 2),
        "gflops_ours": round(gflops_ours, 2),
        "gflops_conv_peak": round(peak, 2),
        "fraction_of_peak_reference": round(gflops_ref / peak, 3),
        "fraction_of_peak_ours": round(gflops_ours / peak, 3),
        "speedup_bound": round(peak / gflops_ref, 3),
        "speedup_bound_note": "conv peak / reference rate: no fp32 path doing the same work beats it",
        "cpu_bf16_t_s": None if t_bf16 is None else round(t_bf16, 4),
        "cpu_bf16_speedup": None if t_bf16 is None else round(t_reference / t_bf16, 3),
        "cpu_bf16_max_abs_diff_stored": None if t_bf16 is None else diff_bf16,
        "cpu_bf16_note": "our path under torch.autocast('cpu', bfloat16); not used by the pipeline",
        "max_abs_diff": diff_fp32,
        "max_abs_diff_note": "fp32 maps before float16 storage, ours without AMP",
        "max_abs_diff_stored_fp16": diff_fp16,
        "ours_precision": amp_note,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "torch_version": torch.__version__,
        "timing": "both write an HDF5 store; after a warm-up on 4 images; best of alternating repeats",
    }
    write_json(out_json, result)
    return result
