"""Boundary-based affinity: path geometry, pair labels, loss, training (decreasing, resumable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from killing import killed_after_steps
from refine_fakes import make_world
from torch import nn

from pole_core.io.png import write_mask
from pole_core.refine.affinity import (
    AffinityTrainParams,
    BoundaryNet,
    FeatureExtractor,
    affinity_from_boundary,
    affinity_labels,
    affinity_loss,
    downsample_labels,
    grid_size,
    load_affinity_net,
    path_index,
    predict_boundary,
    stride4_size,
    train_affinity,
)
from pole_core.training import RunOptions


def test_path_index_geometry():
    pi = path_index(5)
    assert pi.n_offsets == 34  # IRNet's half-neighbourhood for radius 5
    offs = {tuple(o) for o in pi.offsets.tolist()}
    assert (0, 1) in offs and (4, 0) in offs and (0, -1) not in offs and (5, 0) not in offs
    assert all(dy * dy + dx * dx < 25 for dy, dx in offs)
    for rows, paths in pi.groups:
        for row, path in zip(rows, paths, strict=True):
            dy, dx = pi.offsets[row]
            assert path[0] == pi.window_pos(dy, dx)  # destination first
            assert pi.window_pos(0, 0) in path  # source on the path
    assert path_index(10).n_offsets > 100 and path_index(5) is pi


def test_affinity_is_one_without_boundaries_and_low_across_a_line():
    h, w, r = 12, 14, 4
    pi = path_index(r)
    aff = affinity_from_boundary(torch.zeros(h, w), r)[0]
    assert aff.shape == (pi.n_offsets, h, w)
    line = torch.zeros(h, w)
    line[:, 7] = 1.0
    aff_line = affinity_from_boundary(line, r)[0]
    for p, (dy, dx) in enumerate(pi.offsets.tolist()):
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                assert aff[p, y, x] == (1.0 if inside else 0.0)
                crosses = min(x, x + dx) <= 7 <= max(x, x + dx)
                if inside:
                    assert aff_line[p, y, x] == (0.0 if crosses else 1.0)


def test_affinity_is_differentiable():
    b = torch.full((1, 1, 6, 6), 0.3, requires_grad=True)
    affinity_from_boundary(b, 3).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_affinity_labels_match_brute_force():
    r = 3
    pi = path_index(r)
    lab = torch.tensor([[0, 0, 1, 1, 255], [0, 2, 1, 255, 0], [0, 0, 0, 1, 1]])
    bg, fg, neg = (t[0] for t in affinity_labels(lab[None], r))
    h, w = lab.shape
    for p, (dy, dx) in enumerate(pi.offsets.tolist()):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                a = int(lab[y, x])
                b = int(lab[ty, tx]) if 0 <= ty < h and 0 <= tx < w else 255
                valid = a != 255 and b != 255
                assert bg[p, y, x] == float(valid and a == b == 0)
                assert fg[p, y, x] == float(valid and a == b and a > 0)
                assert neg[p, y, x] == float(valid and a != b)


def test_loss_prefers_boundaries_between_labels():
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, :, 4:] = 1
    good = torch.zeros(1, 1, 8, 8)
    good[..., 4] = 1.0  # boundary exactly where the labels change
    bad = torch.zeros(1, 1, 8, 8)
    r = 3
    lg = affinity_loss(affinity_from_boundary(good, r), lab, r)
    lb = affinity_loss(affinity_from_boundary(bad, r), lab, r)
    assert lg["neg"] < 1e-3 and lb["neg"] > 5  # no boundary: every negative pair costs -log(1e-5)
    assert lg["total"] < lb["total"]


class TinyExtractor(nn.Module):
    """Frozen random convs at strides 2 and 4: a multi-level stand-in for the CAM backbone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def features(self, x):
        f1 = torch.relu(self.c1(x))
        return [f1, torch.relu(self.c2(f1))]


def _items(n=12, size=32, seed=0):
    """Images split into two colours at a random column; labels 0/1 with a 255 seam."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        split = int(torch.randint(8, 24, (), generator=g))
        img = torch.zeros(3, size, size)
        img[0, :, :split] = 0.9
        img[2, :, split:] = 0.9
        mask = torch.zeros(size, size, dtype=torch.long)
        mask[:, split:] = 1
        mask[:, split - 1 : split + 1] = 255
        items.append({"image": img, "mask": mask})
    return items


def _net():
    torch.manual_seed(0)
    return BoundaryNet(TinyExtractor())  # wrapped: its .features is used


def _train(net, items, out, *, log=lambda s: None, **hp):
    """train_affinity, quiet, with the small settings most tests share (overridable)."""
    params = AffinityTrainParams(**{"radius": 3, "epochs": 1, "batch_size": 4, **hp})
    return train_affinity(
        net, items, out, params, RunOptions(device="cpu", progress=False, log=log)
    )


def test_affinity_net_shapes_and_frozen_extractor():
    net = _net()
    assert net.in_channels == [8, 8] and isinstance(net.extractor, FeatureExtractor)
    x = torch.rand(2, 3, 30, 37)
    out = net(x)
    assert out.shape == (2, 1, *stride4_size(30, 37)) == (2, 1, 8, 10)
    assert out.min() >= 0 and out.max() <= 1
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    net.train()
    assert not net.extractor.training
    # a bound method is wrapped (its module registered); a plain function is used as is
    ext = TinyExtractor()
    bound = BoundaryNet(ext.features)
    assert bound.in_channels == [8, 8] and bound.extractor.backbone is ext
    plain = BoundaryNet(lambda x: [x[:, :2, ::4, ::4]])
    assert plain.in_channels == [2] and plain(x).shape == (2, 1, 8, 10)
    assert downsample_labels(torch.zeros(1, 30, 37, dtype=torch.long)).shape == (1, 8, 10)


def test_training_lowers_the_loss_and_predicts(tmp_path):
    net = _net()
    out = tmp_path / "aff.pt"
    res = _train(net, _items(), out, radius=4, epochs=4, lr=0.1, seed=0)
    assert res["steps"] == 12
    assert res["losses"][-1] < res["losses"][0]
    assert out.is_file() and not (tmp_path / "aff.pt.partial.pt").exists()
    b = predict_boundary(net, _items(1)[0]["image"])
    assert b.shape == (8, 8) and float(b.min()) >= 0 and float(b.max()) <= 1
    again = load_affinity_net(
        TinyExtractor(), out
    )  # a fresh extractor object, same weights (seeded)
    torch.testing.assert_close(predict_boundary(again, _items(1)[0]["image"]), b)


def test_resume_equals_uninterrupted(tmp_path):
    kw = dict(radius=4, epochs=3, batch_size=4, lr=0.1, seed=7)
    full = _net()
    _train(full, _items(), tmp_path / "a.pt", **kw)

    out = tmp_path / "b.pt"
    with killed_after_steps(4):  # 3 steps per epoch: dies in epoch 2
        _train(_net(), _items(), out, **kw)
    assert not out.exists()
    assert (tmp_path / "b.pt.partial.pt").is_file()
    resumed = _net()
    with torch.no_grad():  # scramble: the resumed run must take the head from the checkpoint
        for p in resumed.head.parameters():
            p.add_(1.0)
    res = _train(resumed, _items(), out, **kw)
    assert res["steps"] == 9 and res["resumed_from_epoch"] == 1
    # a partial checkpoint written with other settings is not resumed
    logs = []
    with killed_after_steps(4):
        _train(_net(), _items(), tmp_path / "c.pt", **kw)
    res = _train(_net(), _items(), tmp_path / "c.pt", **{**kw, "lr": 0.05}, log=logs.append)
    assert res["steps"] == 9 and any("afresh" in m for m in logs)
    a = torch.load(tmp_path / "a.pt", weights_only=False)["head"]
    b = torch.load(out, weights_only=False)["head"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_uint8_items_are_accepted(tmp_path):
    items = [
        {
            "image": (it["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
            "mask": it["mask"].numpy(),
        }
        for it in _items(4)
    ]
    res = _train(_net(), items, tmp_path / "u.pt", batch_size=8)
    assert res["steps"] == 1
    with pytest.raises(ValueError, match="radius"):
        path_index(1)


def test_trains_on_augmented_crops_of_crf_labels(tmp_path):
    """The pipeline feeds the boundary head AugmentedDataset crops with the CRF labels as masks."""
    from pole_core.data.transforms import AugmentedDataset
    from pole_core.io.png import read_mask

    ds, _ = make_world(tmp_path, n=3)
    labels = tmp_path / "crf"
    for image_id in ds.ids():
        write_mask(labels / f"{image_id}.png", ds.mask(image_id))
    crops = AugmentedDataset(
        ds,
        ds.ids(),
        resize_long=None,
        crop_size=48,
        flip=True,
        seed=3,
        mask_fn=lambda i: read_mask(labels / f"{i}.png"),
    )
    a, b = crops[1], crops[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (3, 48, 48) and a["mask"].shape == (48, 48)
    # the crop is larger than the image: padding is label 255
    assert (a["mask"] == 255).any() and set(a["mask"].unique().tolist()) <= {0, 2, 255}
    res = _train(_net(), crops, tmp_path / "c.pt", batch_size=2)
    assert res["steps"] == 1


def test_with_the_mini_cam_net(tmp_path):
    """The CAM net's own features (stride 4, one level) drive the boundary head."""
    from pole_core.cam.network import build_cam_net

    torch.manual_seed(0)
    cam_net = build_cam_net("mini", 3, strides=(2, 2, 1, 1), widths=(8, 8, 16, 16))
    net = BoundaryNet(cam_net.features)
    assert net.in_channels == [16]
    out = tmp_path / "m.pt"
    res = _train(net, _items(4), out)
    assert res["steps"] == 1
    assert all(not p.requires_grad for p in cam_net.parameters())
    again = load_affinity_net(cam_net.features, out)
    img = _items(1)[0]["image"]
    torch.testing.assert_close(predict_boundary(again, img), predict_boundary(net, img))


def test_set_epoch_is_called(tmp_path):
    class Items(torch.utils.data.Dataset):
        def __init__(self):
            self.items, self.epochs = _items(4), []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return {**self.items[i], "labels": torch.zeros(3), "index": i}

    items = Items()
    _train(_net(), items, tmp_path / "e.pt", epochs=2)
    assert items.epochs == [0, 1]


def test_grid_stride_context_and_image_level_round_trip(tmp_path):
    """A finer grid (stride 1 or 2), 3×3 context layers and the image as a level are
    options of the same net: shapes follow the stride, the file rebuilds the same net."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 30, 37)
    for stride, size in ((1, (30, 37)), (2, (15, 19)), (4, (8, 10))):
        assert grid_size(30, 37, stride) == size
        net = BoundaryNet(TinyExtractor(), stride=stride)
        assert net(x).shape == (2, 1, *size)
        assert downsample_labels(torch.zeros(1, 30, 37, dtype=torch.long), stride).shape == (
            1,
            *size,
        )
    plain = BoundaryNet(TinyExtractor())
    rich = BoundaryNet(TinyExtractor(), stride=2, context=2, image_level=True)
    assert rich.in_channels == plain.in_channels == [8, 8]  # the image is not a backbone level
    assert len(rich.head.levels) == 3 and rich.head.n_context == 2
    n_plain = sum(p.numel() for p in plain.head.parameters())
    assert sum(p.numel() for p in rich.head.parameters()) > n_plain
    out = tmp_path / "rich.pt"
    res = _train(rich, _items(), out, epochs=2, lr=0.1, seed=0)
    assert res["losses"][-1] < res["losses"][0]
    again = load_affinity_net(TinyExtractor(), out)
    assert (again.stride, again.head.n_context, again.image_level) == (2, 2, True)
    img = _items(1)[0]["image"]
    torch.testing.assert_close(predict_boundary(again, img), predict_boundary(rich, img))
    with pytest.raises(ValueError, match="stride"):
        BoundaryNet(TinyExtractor(), stride=0)
