"""Random walk: spreads inside a region, stops at a boundary; dense == sparse; labels; shard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from refine_fakes import make_world

from pole_core.io.png import read_mask
from pole_core.metrics import miou
from pole_core.refine.affinity import BoundaryNet
from pole_core.refine.crf import CRFParams
from pole_core.refine.random_walk import (
    random_walk,
    run_random_walk_shard,
    rw_to_label,
    transition_weights,
)


def _two_regions(h=16, w=16, col=8):
    edge = torch.zeros(h, w)
    edge[:, col] = 1.0
    cam = torch.zeros(1, h, w)
    cam[0, h // 2, 3] = 1.0  # one seed in the left region
    return cam, edge


@pytest.mark.parametrize("dense_max_nodes", [4096, 0])
def test_seed_spreads_inside_its_region_only(dense_max_nodes):
    cam, edge = _two_regions()
    rw = random_walk(cam, edge, beta=10, exp_times=8, radius=5, dense_max_nodes=dense_max_nodes)[0]
    left, right = rw[:, :8], rw[:, 9:]
    assert float(right.abs().max()) < 1e-6  # nothing crosses the boundary
    assert float(left.min()) > 0.3 * float(left.max())  # the whole left region is reached
    label = rw_to_label(rw[None], [2], (64, 64), bg_thresh=0.25)
    truth = np.zeros((64, 64), dtype=np.uint8)
    truth[:, :32] = 3
    assert miou(truth, label, 4) > 0.9


def test_no_boundary_spreads_everywhere():
    cam, _ = _two_regions()
    rw = random_walk(cam, torch.zeros(16, 16))[0]
    assert float(rw.min()) > 0.5 * float(rw.max())


def test_dense_and_sparse_agree():
    g = torch.Generator().manual_seed(0)
    edge = torch.rand(13, 17, generator=g) * 0.6
    cam = torch.rand(3, 13, 17, generator=g)
    dense = random_walk(cam, edge, exp_times=6, dense_max_nodes=10_000)
    sparse = random_walk(cam, edge, exp_times=6, dense_max_nodes=0)
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-4)
    # the propagation is an average: scores stay within the (damped) input range
    assert float(dense.max()) <= float(cam.max()) + 1e-5 and float(dense.min()) >= 0


def test_transition_weights_are_symmetric():
    edge = torch.rand(9, 11, generator=torch.Generator().manual_seed(1))
    wts = transition_weights(edge, beta=2, radius=3)
    side, r1 = 5, 2
    h, w = edge.shape
    for k in range(side * side):
        dy, dx = k // side - r1, k % side - r1
        back = (r1 - dy) * side + (r1 - dx)
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    assert wts[k, y, x] == wts[back, ty, tx]
                else:
                    assert wts[k, y, x] == 0


def test_rw_to_label_keys_background_and_crop():
    rw = torch.zeros(2, 4, 4)
    rw[0, :, :2] = 1.0
    rw[1, :, 2:] = 0.5
    lab = rw_to_label(rw, np.array([0, 5]), (15, 14), bg_thresh=0.6)
    assert lab.shape == (15, 14) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {1, 0}  # class 5 (0.5 after max-normalisation) loses to bg 0.6
    lab = rw_to_label(rw, np.array([0, 5]), (15, 14), bg_thresh=0.25)
    assert set(np.unique(lab)) == {1, 6}
    assert not rw_to_label(torch.zeros(0, 4, 4), [], (15, 14)).any()


def test_shard_writes_palette_pngs_and_skips_done(tmp_path):
    ds, cams = make_world(tmp_path, n=4)
    ids = ds.ids()

    def boundary(x):  # colour edges on the stride-4 grid stand in for a trained net
        g = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4, ceil_mode=True)[0, 0]
        e = torch.zeros_like(g)
        e[:-1] = (g[1:] - g[:-1]).abs()
        e[:, :-1] = torch.maximum(e[:, :-1], (g[:, 1:] - g[:, :-1]).abs())
        return (e * 10).clamp(0, 1)

    out = tmp_path / "pseudo"
    res = run_random_walk_shard(ds, ids, cams, boundary, out, progress=False)
    assert res == {"done": 4, "skipped": 0}
    for image_id in ids:
        lab = read_mask(out / f"{image_id}.png")
        gt = ds.mask(image_id)
        assert lab.shape == gt.shape
        assert set(np.unique(lab)) <= set(np.unique(gt))
        assert miou(gt, lab, 4) > 0.5
    (out / f"{ids[0]}.png").write_bytes(b"junk")
    res = run_random_walk_shard(ds, ids, cams, boundary, out, progress=False)
    assert res == {"done": 1, "skipped": 3}


def test_shard_with_an_affinity_net(tmp_path):
    ds, cams = make_world(tmp_path, n=2)

    class Ext(torch.nn.Module):
        def features(self, x):
            return [torch.nn.functional.avg_pool2d(x, 4, ceil_mode=True)]

    net = BoundaryNet(Ext())
    res = run_random_walk_shard(ds, ds.ids(), cams, net, tmp_path / "p", progress=False)
    assert res["done"] == 2


def test_rw_to_label_at_stride_one():
    rw = torch.zeros(1, 6, 5)
    rw[0, 2:, :] = 1.0
    lab = rw_to_label(rw, np.array([3]), (6, 5), bg_thresh=0.5, stride=1)
    assert lab.shape == (6, 5)
    assert (lab[2:] == 4).all() and (lab[:2] == 0).all()  # no upsampling blur at stride 1


def test_rw_to_label_class_normalisation_keeps_a_weak_class():
    """A class whose walked scores stay at a fifth of another's: lost to the
    background under the global maximum (IRNet), kept under its own."""
    rw = torch.zeros(2, 4, 8)
    rw[0, :, :4] = 1.0
    rw[1, :, 4:] = 0.2
    keys = np.array([1, 6])
    glob = rw_to_label(rw, keys, (4, 8), bg_thresh=0.5, stride=1)
    per = rw_to_label(rw, keys, (4, 8), bg_thresh=0.5, stride=1, normalize="class")
    assert (glob[:, :4] == 2).all() and (glob[:, 4:] == 0).all()
    assert (per[:, :4] == 2).all() and (per[:, 4:] == 7).all()
    with pytest.raises(ValueError, match="normalize"):
        rw_to_label(rw, keys, (4, 8), normalize="max")


@pytest.mark.parametrize("crf", [None, CRFParams()])
def test_shard_on_the_pixel_grid_with_a_final_crf(tmp_path, crf):
    """stride=1: the walk runs on the full-resolution CAM, the boundary at full size."""
    ds, cams = make_world(tmp_path, n=3)

    def boundary(x):  # colour edges at full resolution
        g = x.mean(1)[0]
        e = torch.zeros_like(g)
        e[:-1] = (g[1:] - g[:-1]).abs()
        e[:, :-1] = torch.maximum(e[:, :-1], (g[:, 1:] - g[:, :-1]).abs())
        return (e * 10).clamp(0, 1)

    out = tmp_path / "pseudo"
    res = run_random_walk_shard(
        ds, ds.ids(), cams, boundary, out, stride=1, exp_times=4, crf=crf, progress=False
    )
    assert res == {"done": 3, "skipped": 0}
    for image_id in ds.ids():
        lab, gt = read_mask(out / f"{image_id}.png"), ds.mask(image_id)
        assert lab.shape == gt.shape and set(np.unique(lab)) <= set(np.unique(gt))
        assert miou(gt, lab, 4) > 0.6


def test_boundary_damping_erases_a_cam_the_boundary_covers():
    # an object two cells wide that the boundary map covers whole: IRNet's damping
    # (cam · (1 − boundary)) leaves nothing to walk; without it the object keeps its score
    edge = torch.zeros(16, 16)
    edge[6:10, 6:10] = 1.0
    cam = torch.zeros(1, 16, 16)
    cam[0, 7:9, 7:9] = 1.0
    damped = random_walk(cam, edge, exp_times=4, dense_max_nodes=0)[0]
    kept = random_walk(cam, edge, exp_times=4, dense_max_nodes=0, damp_boundary=False)[0]
    assert float(damped.abs().max()) < 1e-6
    assert float(kept[7:9, 7:9].min()) > 0.5
    assert float(kept[:5].abs().max()) < 1e-6  # still walled in by its boundary
    dense = random_walk(cam, edge, exp_times=4, dense_max_nodes=10_000, damp_boundary=False)
    torch.testing.assert_close(dense[0], kept, atol=1e-5, rtol=1e-4)
