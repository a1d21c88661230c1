"""Stage E: segmenter builds, learns (255 ignored), resumes bit-exactly, predicts, scores."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from killing import killed_after_steps
from torch.utils.data import Dataset

from pole_core.data.memory import MemoryDataset
from pole_core.io.png import read_mask, write_mask
from pole_core.metrics import score
from pole_core.refine.crf import CRFParams, dense_crf, prob_unary
from pole_core.seg.infer import evaluate_dir, predict, predict_dataset
from pole_core.seg.network import build_seg_net
from pole_core.seg.train import SegTrainParams, load_seg_net, seg_loss, train_seg
from pole_core.training import RunOptions, partial_path

SMALL = (8, 16, 16, 32)  # mini widths for fast tests


def _world(n: int = 6, size: int = 32, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Squares (class 1) and discs (class 2) on noise; a 1-px 255 band on every object boundary."""
    import cv2

    rng = np.random.default_rng(seed)
    images, masks = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for cls in (1, 2) if i % 3 else (1 + i % 2,):
            r = int(rng.integers(5, 8))
            cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
            shape = (
                (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                if cls == 1
                else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            )
            mask[shape] = cls
            img[shape] = (220, 40, 40) if cls == 1 else (40, 60, 220)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        band = mask.copy()
        band[edge] = 255
        images.append(img)
        masks.append(band)
    return images, masks


def fake_voc(images: list[np.ndarray], masks: list[np.ndarray]) -> MemoryDataset:
    """The dataset Stage E needs: ids (sorted), image, mask, class_names."""
    ids = sorted(f"im{i}" for i in range(len(images)))
    return MemoryDataset(
        {i: images[int(i[2:])] for i in ids},
        ["square", "disc"],
        masks={i: masks[int(i[2:])] for i in ids},
    )


class Items(Dataset):
    """Stand-in for data.transforms.AugmentedDataset: the same item dict, no augmentation."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]):
        self.images, self.masks, self.epochs = images, masks, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0,
            "labels": torch.zeros(2),
            "mask": torch.from_numpy(self.masks[i].astype(np.int64)),
            "index": i,
        }


def test_mini_overfits_with_ignore_band(tmp_path):
    """The loss must skip 255 (else CE fails on an out-of-range target) and the net must fit."""
    images, masks = _world()
    assert all((m == 255).any() for m in masks)
    torch.manual_seed(0)
    net = build_seg_net("mini", 3, widths=(16, 32, 32, 64))
    t0 = time.perf_counter()
    stats = train_seg(
        net,
        Items(images, masks),
        tmp_path / "seg.pt",
        SegTrainParams(epochs=60, batch_size=6, lr=0.05, seed=0),
        RunOptions(device="cpu", progress=False, log=lambda s: None),
    )
    assert time.perf_counter() - t0 < 20
    assert stats["loss_per_epoch"][-1] < 0.2 * stats["loss_per_epoch"][0]
    ds = fake_voc(images, masks)
    loaded = load_seg_net(tmp_path / "seg.pt", "cpu")
    predict_dataset(
        loaded, ds, ds.ids(), tmp_path / "pred", scales=(1.0,), flip=True, progress=False
    )
    result = evaluate_dir(tmp_path / "pred", ds, ds.ids())
    assert result["n_images"] == 6
    assert result["miou"] >= 90.0, result
    assert not partial_path(tmp_path / "seg.pt").exists()


def test_seg_loss_ignores_255():
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4))
    masked = mask.clone()
    masked[:, :2] = 255
    keep = masked != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], mask[keep])
    assert torch.allclose(seg_loss(logits, masked), expected)
    assert seg_loss(logits, torch.full_like(mask, 255)).item() == 0.0


def test_deeplabv3_resnet50_random_init_any_size():
    net = build_seg_net("deeplabv3_resnet50", 21).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 65, 65))
    assert out.shape == (1, 21, 65, 65)
    assert net.arch == {"backbone": "deeplabv3_resnet50", "n_classes": 21}


def test_weights_roundtrip_head_swap_and_wrong_arch(tmp_path):
    src = build_seg_net("mini", 5, widths=SMALL)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    same = build_seg_net("mini", 5, widths=SMALL, weights=path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(src.state_dict().values(), same.state_dict().values(), strict=True)
    )
    # a new label set: everything but the last classifier layer is taken over
    other = build_seg_net("mini", 3, widths=SMALL, weights=path)
    assert torch.equal(other.backbone.stem[0].weight, src.backbone.stem[0].weight)
    with pytest.raises(ValueError, match=r"w\.pt: weights do not fit seg backbone 'mini'") as err:
        build_seg_net("mini", 5, widths=(8, 16, 32, 32), weights=path)
    assert "\n" not in str(err.value)
    bad = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, bad)
    with pytest.raises(
        ValueError,
        match=r"resnet\.pt: weights do not fit seg backbone 'deeplabv3_resnet50'.*missing",
    ):
        build_seg_net("deeplabv3_resnet50", 21, weights=bad)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_seg_net("vit", 21)


def test_resume_is_bit_identical(tmp_path):
    images, masks = _world(n=4, size=24, seed=1)
    params = SegTrainParams(epochs=3, batch_size=2, lr=0.02, seed=3)
    quiet = RunOptions(device="cpu", progress=False, log=lambda s: None)

    torch.manual_seed(0)
    full = build_seg_net("mini", 3, widths=SMALL)
    train_seg(full, Items(images, masks), tmp_path / "a.pt", params, quiet)

    torch.manual_seed(0)
    net = build_seg_net("mini", 3, widths=SMALL)
    with killed_after_steps(3):  # 2 steps per epoch: dies in epoch 2
        train_seg(net, Items(images, masks), tmp_path / "b.pt", params, quiet)
    assert not (tmp_path / "b.pt").exists()
    assert partial_path(tmp_path / "b.pt").is_file()  # epoch 1 finished, epoch 2 was cut

    torch.manual_seed(1)  # a restart builds a fresh net; the partial checkpoint must win
    lines: list[str] = []
    net2 = build_seg_net("mini", 3, widths=SMALL)
    items = Items(images, masks)
    train_seg(net2, items, tmp_path / "b.pt", params, replace(quiet, log=lines.append))
    assert any("resuming" in s for s in lines) and items.epochs == [1, 2]
    a = torch.load(tmp_path / "a.pt", weights_only=False)
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    assert a["arch"] == b["arch"] == {"backbone": "mini", "n_classes": 3, "widths": list(SMALL)}
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert not partial_path(tmp_path / "b.pt").exists()


def test_predict_scales_flip_and_skip_existing(tmp_path):
    images, masks = _world(n=2, size=20, seed=2)
    net = build_seg_net("mini", 3, widths=SMALL)
    probs = predict(net, images[0], scales=(0.75, 1.0, 1.5), flip=True, device="cpu")
    assert probs.shape == (3, 20, 20) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)

    ds = fake_voc(images, masks)
    out = tmp_path / "pred"
    write_mask(out / "im0.png", np.full((20, 20), 2, np.uint8))  # an earlier, complete result
    crf = CRFParams(iters=3, gt_prob=0.7)
    predict_dataset(net, ds, ds.ids(), out, crf=crf, progress=False)
    assert (read_mask(out / "im0.png") == 2).all()
    assert read_mask(out / "im1.png").shape == (20, 20)

    res = evaluate_dir(out, ds, ds.ids())
    assert res == score(
        zip(
            [ds.mask(i) for i in ds.ids()],
            [read_mask(out / f"{i}.png") for i in ds.ids()],
            strict=True,
        ),
        ds.class_names,
    )
    with pytest.raises(FileNotFoundError, match="im9.png"):
        evaluate_dir(out, ds, ["im9"])


def test_dense_crf_cleans_noisy_probs():
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, 12:] = 255
    truth = np.zeros((24, 24), np.uint8)
    truth[:, 12:] = 1
    rng = np.random.default_rng(0)
    p1 = np.clip(truth * 0.6 + 0.2 + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    q = dense_crf(img, prob_unary(probs), CRFParams(bi_sxy=10, bi_srgb=10, iters=5))
    assert q.shape == probs.shape and q.dtype == np.float32
    labels = q.argmax(0).astype(np.uint8)
    assert (labels == truth).mean() > (probs.argmax(0) == truth).mean()
    assert (labels == truth).mean() > 0.98
    with pytest.raises(TypeError, match="sxy"):
        CRFParams(sxy=3)  # an unknown term is an error
