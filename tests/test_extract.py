"""Batched multi-scale CAM extraction against the IRNet per-image loop, and the HDF5 it writes.

The per-image loop (the equivalence oracle) is benchmarks/extract.py's, not the library's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.extract import extract_cams_reference, iter_cams_reference
from pole_core.cam.extract import extract_cams, group_by_size, iter_cams, shard_ids
from pole_core.data.memory import MemoryDataset
from pole_core.io.cam_store import open_cams, read_cam

N_CLASSES = 4


class TinyCamNet(nn.Module):
    """Two strided convs + BN + bias-free head: the CAM-net interface at a few thousand weights."""

    def __init__(self, stride: int = 4):
        super().__init__()
        layers, c_in = [], 3
        for _ in range(int(math.log2(stride))):
            layers += [nn.Conv2d(c_in, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
            c_in = 8
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(8, N_CLASSES, 1, bias=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self(x))


def fake_dataset(n: int = 7, seed: int = 0) -> MemoryDataset:
    """Images of two odd sizes (ceil and crop paths), labels with 0–3 classes."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for i in range(n):
        h, w = (21, 30) if i % 3 else (17, 17)
        images[f"im{i}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = np.zeros(N_CLASSES, np.float32)
        lab[rng.choice(N_CLASSES, size=i % 4, replace=False)] = 1.0
        labels[f"im{i}"] = lab
    return MemoryDataset(images, [f"c{i}" for i in range(N_CLASSES)], labels=labels)


def _net(stride: int = 4) -> TinyCamNet:
    torch.manual_seed(0)
    net = TinyCamNet(stride)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        net.head.weight.abs_()  # every class fires somewhere: no all-zero CAMs
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("stride", [4, 8])
def test_batched_equals_reference_fp32(stride: int) -> None:
    net, ds = _net(stride), fake_dataset()
    ids = ds.ids()
    ref = {i: (k, c, s) for i, k, c, s in iter_cams_reference(net, ds, ids)}
    ours = {i: (k, c, s) for i, k, c, s in iter_cams(net, ds, ids, batch_size=3, chunk_pixels=2000)}
    assert set(ours) == set(ref) == set(ids)
    for image_id in ids:
        (k_r, c_r, s_r), (k_o, c_o, s_o) = ref[image_id], ours[image_id]
        np.testing.assert_array_equal(k_r, k_o)
        assert k_o.dtype == np.int64
        assert c_r.shape == c_o.shape and s_r.shape == s_o.shape
        if c_r.size:
            assert np.abs(c_r - c_o).max() <= 1e-3
            assert np.abs(s_r - s_o).max() <= 1e-3


def test_store_layout_keys_attrs_and_normalisation(tmp_path) -> None:
    net, ds = _net(), fake_dataset()
    net.train()
    ids = ds.ids()
    stats = extract_cams(
        net, ds, ids, tmp_path / "c.h5", batch_size=4, attrs={"source": "abc123"}, progress=False
    )
    assert net.training, "the caller's train/eval mode is restored"
    assert stats["n_images"] == len(ids)
    with open_cams(tmp_path / "c.h5") as f:
        assert sorted(f.keys()) == sorted(ids)
        assert list(f.attrs["classes"]) == ds.class_names
        assert list(f.attrs["scales"]) == [1.0, 0.5, 1.5, 2.0]
        assert f.attrs["source"] == "abc123"
        for image_id in ids:
            h, w = ds.image_size(image_id)
            keys_expected = np.flatnonzero(ds.labels(image_id))
            grp = f[image_id]
            assert grp["cam"].dtype == np.float16 and grp["cam_s4"].dtype == np.float16
            assert grp["cam"].shape == (len(keys_expected), h, w)
            assert grp["cam_s4"].shape == (len(keys_expected), math.ceil(h / 4), math.ceil(w / 4))
            cam, keys = read_cam(f, image_id)
            np.testing.assert_array_equal(keys, keys_expected)
            if len(keys):
                assert cam.min() >= 0 and cam.std() > 0.01
                np.testing.assert_allclose(cam.max(axis=(1, 2)), 1.0, atol=1e-3)
                s4, _ = read_cam(f, image_id, stride4=True)
                np.testing.assert_allclose(s4.max(axis=(1, 2)), 1.0, atol=1e-3)


def test_stored_files_match_reference(tmp_path) -> None:
    net, ds = _net(), fake_dataset(5)
    ids = ds.ids()
    extract_cams_reference(net, ds, ids, tmp_path / "ref.h5", scales=(1.0, 0.5), flip=True)
    extract_cams(
        net,
        ds,
        ids,
        tmp_path / "ours.h5",
        scales=(1.0, 0.5),
        workers=1,
        store_stride4=False,
        progress=False,
    )
    with open_cams(tmp_path / "ref.h5") as fr, open_cams(tmp_path / "ours.h5") as fo:
        for image_id in ids:
            assert "cam_s4" not in fo[image_id]
            a, ka = read_cam(fr, image_id)
            b, kb = read_cam(fo, image_id)
            np.testing.assert_array_equal(ka, kb)
            if a.size:
                assert np.abs(a - b).max() <= 1e-3  # float16 storage: at most one ulp near 1


def test_no_flip_single_scale_matches_reference() -> None:
    net, ds = _net(), fake_dataset(4)
    kw = {"scales": (1.0,), "flip": False}
    ref = list(iter_cams_reference(net, ds, ds.ids(), **kw))
    ours = {i: c for i, _, c, _ in iter_cams(net, ds, ds.ids(), batch_size=16, **kw)}
    for image_id, _, cam, _ in ref:
        np.testing.assert_allclose(cam, ours[image_id], atol=1e-5)


def test_group_by_size_batches_equal_sizes() -> None:
    ds = fake_dataset(9)
    batches = group_by_size(ds, ds.ids(), 2)
    assert sorted(i for b in batches for i in b) == sorted(ds.ids())
    for batch in batches:
        assert len(batch) <= 2
        assert len({ds.image_size(i) for i in batch}) == 1


@pytest.mark.parametrize("n,k", [(10, 3), (3, 5), (0, 2), (7, 1)])
def test_shard_ids_cover_every_id_once(n: int, k: int) -> None:
    ids = [f"id{i}" for i in range(n)]
    shards = [shard_ids(ids, k, s) for s in range(k)]
    assert sum(shards, []) == ids
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_ids_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        shard_ids(["a"], 0, 0)
    with pytest.raises(ValueError):
        shard_ids(["a"], 2, 2)
