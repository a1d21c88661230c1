"""``make bench``: run the sub-benchmarks and collect their JSONs.

Each sub-benchmark is a function ``fn(out_json, *, n_images, device, ...) -> dict`` that
writes its own JSON (atomically) and returns the same dict; :func:`run_benchmarks` runs
them and writes ``<out>/bench.json`` with all results keyed by name.

* ``cam_extract`` (:func:`benchmarks.extract.bench_cam_extract`): IRNet's per-image loop
  vs :func:`pole_core.cam.extract.extract_cams`, same net, same images, one process;
  speed-up and the largest CAM difference.
* ``crf`` (:func:`benchmarks.crf.bench_crf_stage`): the CRF labels of the demo net's CAMs,
  serially and over a process pool.

    python -m benchmarks --out results/bench [--n-images 64] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pole_core.io.atomic import write_json

from .extract import bench_cam_extract

BenchFn = Callable[..., dict]


def available_benchmarks() -> dict[str, BenchFn]:
    """Sub-benchmarks by name: CAM extraction, plus the CRF one when pydensecrf imports."""
    benches: dict[str, BenchFn] = {"cam_extract": bench_cam_extract}
    try:
        from .crf import bench_crf_stage
    except ImportError:  # e.g. pydensecrf missing: the CAM benchmark still runs
        return benches
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
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
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
