"""Segmentation networks for Stage E (trained on the pseudo-masks, evaluated on val).

Every network here is a :class:`SegNet`: float [0,1] images in, logits
B×(C+1)×H×W at the input size out (ImageNet normalisation happens inside, so
callers never need to know the backbone's statistics). Submodules are named
``backbone`` and ``classifier`` exactly as in torchvision's DeepLabV3, so a
torchvision state dict (or a plain ResNet one) loads without key renaming.

Backbones:
- ``deeplabv3_resnet101`` / ``deeplabv3_resnet50``: torchvision DeepLabV3
  (output stride 8, ASPP), built without downloading anything; a local
  state-dict file may be given as ``weights``.
- ``mini``: a small DeepLab-style net for the 64-px demo world: a 4-stage
  residual conv encoder (output stride 8, dilated last stage), an ASPP-lite head
  (1×1 + dilated 3×3 branches + image pooling) and a V3+-style stride-4 skip,
  then bilinear upsampling. GroupNorm instead of BatchNorm, because its
  train and eval behaviour are identical: a short CPU run on small batches
  has no running statistics to get wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.checkpoint import mismatch_summary

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class _Block(nn.Module):
    """Residual basic block; the first conv may downsample (stride) or dilate."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.norm1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = _gn(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.short(x))


class MiniEncoder(nn.Module):
    """Strides 2,2,2,1 (dilation 2 in the last stage): output stride 8, plus stride-4 features."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, 2, 1, bias=False), _gn(w0), nn.ReLU(inplace=True)
        )
        self.layer1 = _Block(w0, w1, stride=2)
        self.layer2 = _Block(w1, w2, stride=2)
        self.layer3 = _Block(w2, w3, stride=1, dilation=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return {"out": self.layer3(self.layer2(low)), "low": low}


class MiniHead(nn.Module):
    """ASPP-lite (1×1, 3×3 d=2, 3×3 d=4, image pooling) and a stride-4 skip decoder.

    ``width`` follows the stride-4 width (at least 16), so tiny smoke configs stay tiny.
    """

    def __init__(self, cin: int, clow: int, n_classes: int, width: int = 64, rates=(2, 4)):
        super().__init__()

        def cbr(ci: int, co: int, k: int, d: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(ci, co, k, padding=d * (k // 2), dilation=d, bias=False),
                _gn(co),
                nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList([cbr(cin, width, 1)] + [cbr(cin, width, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.ReLU(inplace=True))
        self.project = cbr(width * (len(rates) + 2), width, 1)
        self.low = cbr(clow, width // 2, 1)
        self.fuse = cbr(width + width // 2, width, 3)
        self.out = nn.Conv2d(width, n_classes, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x, low = feats["out"], feats["low"]
        ys = [b(x) for b in self.branches]
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        ys.append(pooled.expand(-1, -1, *x.shape[-2:]))
        y = self.project(torch.cat(ys, 1))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(torch.cat([y, self.low(low)], 1)))


class SegNet(nn.Module):
    """Normalise → backbone → classifier → bilinear upsampling to the input size.

    ``arch`` holds the :func:`build_seg_net` keyword arguments, so a checkpoint
    can rebuild the same network (:func:`pole_core.seg.train.load_seg_net`).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, arch: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.arch = dict(arch)
        self.n_classes = int(arch["n_classes"])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.backbone((x - self.mean) / self.std)
        if isinstance(self.classifier, MiniHead):
            logits = self.classifier(feats)
        else:
            logits = self.classifier(feats["out"])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _mini(n_classes: int, widths: Sequence[int], arch: dict[str, Any]) -> SegNet:
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4:
        raise ValueError(f"seg: mini widths must have 4 entries, got {widths}")
    arch["widths"] = list(widths)
    encoder = MiniEncoder(widths)  # built before the head: the order of their random init
    head = MiniHead(widths[3], widths[1], n_classes, width=max(16, widths[1]))
    return SegNet(encoder, head, arch)


def _torchvision_deeplabv3(name: str) -> Callable[..., SegNet]:
    def build(n_classes: int, widths: Sequence[int], arch: dict[str, Any]) -> SegNet:
        from torchvision.models import segmentation

        tv = getattr(segmentation, name)(
            weights=None, weights_backbone=None, num_classes=n_classes, aux_loss=False
        )
        return SegNet(tv.backbone, tv.classifier, arch)

    return build


# Segmenter registry: name -> builder(n_classes, widths, arch). A new segmenter is one
# builder plus one entry here.
BACKBONES: dict[str, Callable[..., SegNet]] = {
    "deeplabv3_resnet101": _torchvision_deeplabv3("deeplabv3_resnet101"),
    "deeplabv3_resnet50": _torchvision_deeplabv3("deeplabv3_resnet50"),
    "mini": _mini,
}


def build_seg_net(
    backbone: str = "deeplabv3_resnet101",
    n_classes: int = 21,
    *,
    weights: str | os.PathLike | None = None,
    widths: Sequence[int] = (32, 64, 128, 256),
) -> SegNet:
    """Build a segmenter with ``n_classes`` outputs (background included).

    ``weights``: a local state-dict file (torchvision DeepLabV3, plain ResNet
    backbone, or a :func:`train_seg` checkpoint). Nothing is downloaded.
    """
    if n_classes < 2:
        raise ValueError(
            f"seg: n_classes must count background plus at least one class, got {n_classes}"
        )
    if backbone not in BACKBONES:
        raise ValueError(
            f"seg: unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}"
        )
    arch: dict[str, Any] = {"backbone": backbone, "n_classes": int(n_classes)}
    net = BACKBONES[backbone](n_classes, widths, arch)
    if weights is not None:
        load_weights(net, weights)
    return net


def _unwrap_state(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside the usual checkpoint wrappers."""
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise TypeError("not a state dict")
    state = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        state[k.removeprefix("module.")] = v
    return state


def load_weights(net: SegNet, path: str | os.PathLike) -> None:
    """Load a local state dict into ``net``; a clear one-line error naming the file on mismatch.

    Accepted: the whole network (torchvision DeepLabV3 keys, or a train_seg
    checkpoint), or a backbone alone (plain ResNet keys: ``fc.*`` dropped, the
    head stays at its initialisation). ``aux_classifier.*`` is ignored. The last
    classifier layer may differ in its number of classes (fine-tuning to a new
    label set): it is then left at initialisation. Everything else must match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segmentation weights not found")
    try:
        state = _unwrap_state(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as err:
        raise ValueError(
            f"{path}: unreadable segmentation weights ({type(err).__name__}: {err})"
        ) from None
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    if not any(k.startswith(("backbone.", "classifier.")) for k in state):
        # a plain backbone file (e.g. torchvision ResNet ImageNet weights)
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}

    own = net.state_dict()
    last = _last_classifier_keys(net)
    missing = [
        k
        for k in own
        if k not in state and not (k.startswith("classifier.") and not _has_head(state))
    ]
    unexpected = [k for k in state if k not in own]
    wrong, skip = [], []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            (skip if k in last and own[k].shape[1:] == v.shape[1:] else wrong).append(k)
    if missing or unexpected or wrong:
        parts = mismatch_summary(missing, unexpected, wrong)
        raise ValueError(
            f"{path}: weights do not fit seg backbone {net.arch['backbone']!r} "
            f"with {net.n_classes} classes: {'; '.join(parts)}"
        )
    net.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)


def _has_head(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("classifier.") for k in state)


def _last_classifier_keys(net: SegNet) -> set[str]:
    """State-dict keys of the final class-scoring conv (its out-channels = n_classes)."""
    last = None
    for name, mod in net.classifier.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.out_channels == net.n_classes:
            last = name
    if last is None:
        return set()
    return {f"classifier.{last}.weight", f"classifier.{last}.bias"}
