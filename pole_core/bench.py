"""``make bench``: timed comparisons of our batched stages against the reference loops.

Each sub-benchmark is a function ``fn(out_json, *, n_images, device, ...) -> dict`` that
writes its own JSON (atomically) and returns the same dict; :func:`run_benchmarks` runs
them and writes ``<out>/bench.json`` with all results keyed by name.

* ``cam_extract`` (here): :func:`pole_core.cam.extract.extract_cams_reference` (IRNet's
  per-image loop) vs :func:`pole_core.cam.extract.extract_cams`, same net, same images,
  one process; speed-up and the largest CAM difference.
* ``crf``: when ``pole_core.refine.crf`` defines ``bench_crf(items, *, processes, repeats)``
  (owned by the refine stage), :func:`bench_crf_stage` feeds it the demo net's CAMs.

    python -m pole_core.bench --out results/bench [--n-images 64] [--device auto]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cam.extract import (
    DEFAULT_SCALES,
    extract_cams,
    extract_cams_reference,
    iter_cams,
    iter_cams_reference,
    rescale_images,
)
from .device import resolve_device
from .io.atomic import write_json
from .io.cam_store import open_cams


class SyntheticDataset:
    """In-memory images and labels with the dataset interface; reproducible from ``seed``.

    Smooth random blobs on noise (not pure noise, so CAMs are not all flat), 1–3 labels
    per image. Masks are random too; this is for timing, not for scores.
    """

    def __init__(self, n_images: int, image_size: int = 64, n_classes: int = 10, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.class_names = [f"class{i}" for i in range(n_classes)]
        self._ids = [f"img{i:05d}" for i in range(n_images)]
        h = w = image_size
        yy, xx = np.mgrid[0:h, 0:w]
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        for image_id in self._ids:
            img = rng.normal(110, 30, (h, w, 3))
            mask = np.zeros((h, w), np.uint8)
            labels = np.zeros(n_classes, np.float32)
            for k in rng.choice(n_classes, size=rng.integers(1, 4), replace=False):
                cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 8, h / 3)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
                img[blob] = rng.uniform(0, 255, 3)
                mask[blob] = k + 1
                labels[k] = 1.0
            self._images[image_id] = np.clip(img, 0, 255).astype(np.uint8)
            self._labels[image_id] = labels
            self._masks[image_id] = mask

    def ids(self, split: str = "train") -> list[str]:
        return list(self._ids)

    def image(self, image_id: str) -> np.ndarray:
        return self._images[image_id]

    def labels(self, image_id: str) -> np.ndarray:
        return self._labels[image_id]

    def mask(self, image_id: str) -> np.ndarray:
        return self._masks[image_id]

    def image_size(self, image_id: str) -> tuple[int, int]:
        return self._images[image_id].shape[:2]


class TinyCamNet(nn.Module):
    """Fallback stride-4 CAM net, used only when ``pole_core.cam.network`` cannot be imported."""

    stride = 4

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, 2, 1),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.Conv2d(width * 2, width * 2, 3, 1, 1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width * 2, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self(x))


# The default config's cam.strides for the mini backbone (output stride 4).
DEMO_STRIDES = (2, 2, 1, 1)


def build_demo_net(n_classes: int, seed: int = 0, backbone: str = "mini") -> tuple[nn.Module, str]:
    """A CAM net at a fixed random init (the demo's "mini", or the paper's ResNet-50), and a
    note on where it came from."""
    torch.manual_seed(seed)
    try:
        from .cam.network import build_cam_net
    except ImportError as err:
        return TinyCamNet(n_classes).eval(), f"fallback TinyCamNet (pole_core.cam.network: {err})"
    if backbone == "resnet50":
        net = build_cam_net(backbone="resnet50", n_classes=n_classes)
        return net.eval(), "pole_core.cam.network resnet50, strides [2, 2, 2, 1], random init"
    net = build_cam_net(backbone="mini", n_classes=n_classes, strides=DEMO_STRIDES)
    return net.eval(), f"pole_core.cam.network mini, strides {list(DEMO_STRIDES)}"


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _load_dataset(data_root: str | None, split: str, n_images: int, image_size: int, seed: int):
    if data_root is None:
        ds = SyntheticDataset(n_images, image_size=image_size, seed=seed)
        return ds, ds.ids(), f"synthetic {image_size}x{image_size}"
    from .data.voc import VOCDataset

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
    """CRF timing (serial vs process pool) via ``pole_core.refine.crf.bench_crf``, when it exists.

    Its inputs are the demo net's CAMs (random init, stored precision) of the same synthetic
    images as ``cam_extract``; the CRF's cost does not depend on what the CAMs show.
    """
    from .refine.crf import bench_crf

    dataset = SyntheticDataset(n_images, image_size=image_size, seed=seed)
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
        **bench_crf(items, processes=processes, repeats=repeats),
    }
    write_json(out_json, result)
    return result


BenchFn = Callable[..., dict]


def available_benchmarks() -> dict[str, BenchFn]:
    """Sub-benchmarks by name: CAM extraction, plus the CRF one when ``pole_core.refine.crf``
    provides ``bench_crf`` (its own stage owns that function; we only feed it)."""
    benches: dict[str, BenchFn] = {"cam_extract": bench_cam_extract}
    try:
        crf = importlib.import_module("pole_core.refine.crf")
    except ImportError:  # e.g. pydensecrf missing: the CAM benchmark still runs
        crf = None
    if crf is not None and hasattr(crf, "bench_crf"):
        benches["crf"] = bench_crf_stage
    return benches


def run_benchmarks(
    out_dir: str | os.PathLike,
    *,
    n_images: int = 64,
    device: str = "auto",
    only: Sequence[str] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict]:
    """Run the sub-benchmarks into ``out_dir/<name>.json`` and ``out_dir/bench.json``."""
    out_dir = Path(out_dir)
    benches = available_benchmarks()
    names = list(only) if only else list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {sorted(benches)}")
    results: dict[str, dict] = {}
    for name in names:
        kwargs = (extra or {}).get(name, {})
        results[name] = benches[name](
            out_dir / f"{name}.json", n_images=n_images, device=device, **kwargs
        )
    write_json(out_dir / "bench.json", results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pole_core.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", required=True, help="output folder (bench.json + one JSON per benchmark)"
    )
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--only", nargs="*", help="names of sub-benchmarks to run (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="cam_extract: images per batch")
    parser.add_argument(
        "--image-size", type=int, default=64, help="cam_extract: synthetic image side"
    )
    parser.add_argument("--workers", type=int, default=0, help="cam_extract: DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="cam_extract: timed runs, best kept")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--data", default=None, help="cam_extract: a VOC-layout root instead of synthetic images"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--backbone", default="mini", choices=["mini", "resnet50"], help="cam_extract: CAM net"
    )
    args = parser.parse_args(argv)
    extra = {
        "cam_extract": {
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "workers": args.workers,
            "repeats": args.repeats,
            "threads": args.threads,
            "data_root": args.data,
            "split": args.split,
            "backbone": args.backbone,
        }
    }
    results = run_benchmarks(
        args.out, n_images=args.n_images, device=args.device, only=args.only, extra=extra
    )
    for name, res in results.items():
        shown = {
            k: res[k]
            for k in ("n_images", "t_reference_s", "t_ours_s", "speedup", "max_abs_diff")
            if k in res
        }
        print(f"{name}: {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
