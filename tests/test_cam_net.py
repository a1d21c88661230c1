"""CAM network (shapes, strides, head, weight files) and POLE adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pole_core.cam.adapters import Adapter
from pole_core.cam.network import CamNet, build_cam_net


def test_mini_shapes_stride_and_head():
    net = build_cam_net("mini", 5, strides=(2, 2, 1, 1), widths=(8, 8, 16, 16)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = net(x)
        cams = net.cam(x)
        feats = net.features(x)
    assert net.stride == 4
    assert logits.shape == (2, 5, 16, 16)
    assert feats.shape == (2, 16, 16, 16)
    assert torch.equal(cams, F.relu(logits))
    assert net.classifier.bias is None and net.classifier.kernel_size == (1, 1)
    assert net.arch == {
        "backbone": "mini",
        "n_classes": 5,
        "strides": [2, 2, 1, 1],
        "widths": [8, 8, 16, 16],
        "freeze_bn": False,
    }


@pytest.mark.parametrize(
    ("backbone", "kw", "channels"),
    [
        ("mini", {"strides": (2, 2, 1, 1), "widths": (8, 8, 16, 16)}, [8, 8, 16, 16]),
        ("resnet50", {}, [64, 256, 512, 1024, 2048]),
    ],
)
def test_feature_levels_end_with_the_features(backbone, kw, channels):
    # the boundary network reads every stage (IRNet); the last one is the CAM features
    net = build_cam_net(backbone, 3, **kw).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        levels = net.feature_levels(x)
        feats = net.features(x)
    assert [f.shape[1] for f in levels] == channels
    assert torch.equal(levels[-1], feats)
    assert levels[0].shape[-1] > levels[-1].shape[-1]  # shallow levels are finer


def test_mini_strides_apply():
    net = build_cam_net("mini", 3, strides=(2, 2, 2, 1), widths=(4, 4, 4, 4)).eval()
    assert net.stride == 8
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 3, 8, 8)


def test_resnet50_shapes_stride_and_param_groups():
    net = build_cam_net("resnet50", 20).eval()
    assert isinstance(net, CamNet) and net.stride == 16
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 20, 4, 4)
    assert torch.isfinite(out).all()
    assert net.classifier.bias is None and net.classifier.in_channels == 2048
    # CLIMS: stem (conv1, bn1) frozen; head in its own group
    groups = net.param_groups(1e-3, 1e-2, 1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert groups[1]["params"] == [net.classifier.weight]
    assert all(p is not net.backbone.conv1.weight for p in groups[0]["params"])
    assert not net.backbone.conv1.weight.requires_grad
    # freeze_bn (default for resnet50): BN stays in eval mode under .train()
    net.train()
    assert not net.backbone.bn1.training and not net.backbone.layer1[0].bn1.training
    assert net.backbone.layer1.training


def test_resnet50_weights_round_trip_and_wrong_arch(tmp_path):
    from torchvision.models import resnet18, resnet50

    torch.manual_seed(1)
    ref = resnet50(weights=None)
    good = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), good)  # includes fc.*, which is ignored
    net = build_cam_net("resnet50", 4, weights=good)
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k

    bad = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), bad)
    with pytest.raises(ValueError, match=r"r18\.pth: .*does not match resnet50"):
        build_cam_net("resnet50", 4, weights=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth: unreadable"):
        build_cam_net("resnet50", 4, weights=junk)


def test_bad_backbone_name():
    with pytest.raises(ValueError, match="backbone"):
        build_cam_net("vgg16", 3)


def test_mini_bn_trains_normally():
    net = build_cam_net("mini", 2, strides=(2, 1), widths=(4, 4)).train()
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_adapter_identity_at_ratio_zero():
    torch.manual_seed(0)
    f = torch.randn(7, 16)
    ad = Adapter(16, reduction=4, ratio=0.0)
    out = ad(f)
    assert torch.equal(out, F.normalize(f, dim=-1))  # exactly the (normalised) input
    unit = F.normalize(f, dim=-1)
    torch.testing.assert_close(ad(unit), unit)


def test_adapter_residual_mix():
    torch.manual_seed(0)
    ad = Adapter(16, reduction=4, ratio=0.2)
    assert ad.fc1.weight.shape == (4, 16) and ad.fc2.weight.shape == (16, 4)
    assert ad.fc1.bias is None and ad.fc2.bias is None
    assert ad.ratio.shape == (16,) and torch.allclose(ad.ratio, torch.full((16,), 0.2))
    f = F.normalize(torch.randn(3, 5, 16), dim=-1)
    out = ad(f)
    assert out.shape == f.shape
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 5))
    a = ad.fc2(F.relu(ad.fc1(f)))
    torch.testing.assert_close(out, F.normalize(0.2 * a + 0.8 * f, dim=-1))
    out.sum().backward()
    assert ad.ratio.grad is not None and ad.fc1.weight.grad is not None
