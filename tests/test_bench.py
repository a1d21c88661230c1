"""make bench's CAM extraction benchmark: the roofline figures it reports are computed, not assumed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pole_core.bench import bench_cam_extract, extraction_flops_per_image


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
