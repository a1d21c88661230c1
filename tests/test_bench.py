"""make bench (benchmarks/): the roofline figures it reports are computed, not assumed; the CRF timing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from refine_fakes import make_world
from torch import nn

from benchmarks.crf import bench_crf, load_bench_items
from benchmarks.extract import bench_cam_extract, extraction_flops_per_image
from benchmarks.run import run_benchmarks
from pole_core.io.atomic import read_json
from pole_core.refine.crf import CRFParams


class OneConv(nn.Module):
    """A 3→4 3×3 convolution: its FLOPs are easy to count by hand."""

    stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def test_flops_per_image_counts_every_scale_and_flip():
    net = OneConv()
    per_pixel = 2 * 3 * 4 * 9  # multiply-adds of one output pixel, 2 FLOPs each
    expected = per_pixel * 2 * (16 * 16 + 8 * 8)  # flip doubles; scales 1.0 and 0.5
    assert extraction_flops_per_image(net, (16, 16), (1.0, 0.5), flip=True) == expected
    assert extraction_flops_per_image(net, (16, 16), (1.0,), flip=False) == per_pixel * 16 * 16


def test_bench_reports_speedup_and_roofline(tmp_path):
    res = bench_cam_extract(
        tmp_path / "cam_extract.json", n_images=4, device="cpu", image_size=32, repeats=1
    )
    assert (tmp_path / "cam_extract.json").is_file()
    assert res["max_abs_diff"] <= 1e-3
    assert res["gflop_per_image"] > 0 and res["gflops_conv_peak"] > 0
    ratio = res["t_reference_s"] / res["t_ours_s"]
    assert abs(res["speedup"] - ratio) < 1e-2 * ratio
    assert abs(res["speedup_bound"] - res["gflops_conv_peak"] / res["gflops_reference"]) < 0.01


def test_bench_cam_extract_smoke(tmp_path) -> None:
    extra = {"cam_extract": {"image_size": 24, "repeats": 1, "batch_size": 4}}
    out = run_benchmarks(tmp_path, n_images=3, device="cpu", only=["cam_extract"], extra=extra)
    res = read_json(tmp_path / "cam_extract.json")
    assert read_json(tmp_path / "bench.json") == out == {"cam_extract": res}
    assert res["n_images"] == 3 and res["max_abs_diff"] <= 1e-3
    for key in ("t_reference_s", "t_ours_s", "speedup", "device", "torch_threads", "net"):
        assert key in res
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_benchmarks(tmp_path, only=["nope"])


def test_bench_crf_reports_timings(tmp_path):
    ds, cams = make_world(tmp_path, n=4)
    items = load_bench_items(ds, ds.ids(), cams)
    res = bench_crf(items, fg_thresh=0.30, bg_thresh=0.05, params=CRFParams(), processes=2)
    assert set(res) >= {"t1", "t2", "efficiency", "n_images"}
    assert res["t1"] > 0 and res["t2"] > 0 and res["n_images"] == 4
