"""The optional CAM classifier start (cam.pretrain): learns labels, resumes, loads as a CAM net."""

from __future__ import annotations

import torch
from killing import killed_after_steps
from test_cam_train import TinyItems, make_net

from pole_core.cam.pretrain import PretrainParams, classification_loss, pretrain_cam_classifier
from pole_core.cam.train import load_cam_net
from pole_core.training import RunOptions, partial_path

HP = {"batch_size": 4, "lr": 0.05, "head_lr": 0.5, "weight_decay": 1e-4, "momentum": 0.9, "seed": 1}


def fit(net, items, out, **hp):
    params = PretrainParams(**{**HP, **hp})
    return pretrain_cam_classifier(
        net, items, out, params, RunOptions(device="cpu", progress=False, log=lambda s: None)
    )


def test_classification_loss_prefers_the_right_labels():
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    right = torch.tensor([4.0, -4.0, 4.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert classification_loss(right, labels) < 0.05 < classification_loss(-right, labels)


def test_classifier_learns_the_labels_and_loads_as_a_cam_net(tmp_path):
    items, out = TinyItems(16), tmp_path / "init.pt"
    stats = fit(make_net(0), items, out, epochs=15)
    losses = [row["loss"] for row in stats["epochs"]]
    assert losses[-1] < 0.6 * losses[0]
    assert stats["epochs"][-1]["label_accuracy"] >= 0.9
    assert out.is_file() and not partial_path(out).exists()
    net, adapters, meta = load_cam_net(out)
    assert adapters is None and meta["arch"]["widths"] == [8, 8, 16, 16]
    with torch.no_grad():  # the pooled logits of the loaded net predict the labels
        x = torch.stack([it["image"] for it in items.items])
        pred = net(x).mean(dim=(2, 3)) > 0
    y = torch.stack([it["labels"] for it in items.items]) > 0.5
    assert (pred == y).float().mean() >= 0.9


def test_resume_is_bit_identical(tmp_path):
    items = TinyItems(8)
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    fit(make_net(0), items, full, epochs=3)
    with killed_after_steps(5):  # 2 steps per epoch: dies in epoch 3
        fit(make_net(0), items, cut, epochs=3)
    assert not cut.exists() and partial_path(cut).is_file()
    stats = fit(make_net(7), items, cut, epochs=3)
    assert stats["resumed_from_epoch"] == 2
    a, b = torch.load(full, weights_only=False), torch.load(cut, weights_only=False)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
