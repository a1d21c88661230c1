"""The CAM network of Stage A: a backbone plus a bias-free 1×1 classifier head.

Two backbones share one interface:

* ``"resnet50"``: torchvision's ResNet-50 with IRNet/CLIMS strides. ``strides =
  (s0, s1, s2, s3)`` are the strides of conv1, layer2, layer3 and layer4 (the
  max-pool always halves once more), so the paper's ``(2, 2, 2, 1)`` gives output
  stride 16. The stride of a bottleneck sits on its 3×3 conv (ResNet v1.5, the
  same place as in IRNet's ``resnet50.py``), so torchvision ImageNet weights load
  unchanged.
* ``"mini"``: a small conv-BN-ReLU net for the 64-px demo world; one stage per
  entry of ``widths``, two 3×3 convs each, the first with the stage's stride.
  ``strides=(2, 2, 1, 1)`` gives output stride 4.

Inputs are float images in [0, 1]; the ImageNet normalisation happens inside, so
every caller (training, extraction, the affinity stage) feeds the same tensors
that the data pipeline and ``ClipBundle.encode_image`` use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.checkpoint import mismatch_summary

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 without avgpool/fc; parameter names match torchvision's.

    Keeping torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4``) lets an
    ImageNet state-dict file load directly into this module.
    """

    def __init__(self, strides: Sequence[int] = (2, 2, 2, 1)) -> None:
        super().__init__()
        from torchvision.models import resnet50

        if len(strides) != 4:
            raise ValueError(
                f"resnet50 needs 4 strides (conv1, layer2, layer3, layer4), got {strides}"
            )
        base = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            base.conv1,
            base.bn1,
            base.relu,
            base.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            base.layer1,
            base.layer2,
            base.layer3,
            base.layer4,
        )
        self.conv1.stride = (strides[0], strides[0])
        for layer, s in zip((self.layer2, self.layer3, self.layer4), strides[1:], strict=True):
            block = layer[0]
            block.conv2.stride = (s, s)
            if block.downsample is not None:
                block.downsample[0].stride = (s, s)
        self.out_channels = 2048
        self.stride = int(strides[0]) * 2 * math.prod(int(s) for s in strides[1:])

    def stem_parameters(self) -> list[nn.Parameter]:
        """conv1 + bn1: frozen during CAM training, as in IRNet/CLIMS (low-level ImageNet filters)."""
        return [*self.conv1.parameters(), *self.bn1.parameters()]

    def stages_list(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five stage outputs IRNet's boundary branch reads (stem, layer1..layer4)."""
        out = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out.append(layer(out[-1]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class MiniBackbone(nn.Module):
    """Small CNN for the demo world: fast on 2 CPU cores, same interface as ResNet-50."""

    def __init__(
        self, widths: Sequence[int] = (32, 64, 128, 256), strides: Sequence[int] = (2, 2, 1, 1)
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(
                f"mini backbone needs one stride per width, got widths={widths} strides={strides}"
            )
        stages = []
        c_in = 3
        for w, s in zip(widths, strides, strict=True):
            stages.append(
                nn.Sequential(
                    *_conv_bn_relu(c_in, int(w), int(s)), *_conv_bn_relu(int(w), int(w), 1)
                )
            )
            c_in = int(w)
        self.stages = nn.Sequential(*stages)
        self.out_channels = c_in
        self.stride = math.prod(int(s) for s in strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stem_parameters(self) -> list[nn.Parameter]:
        return []

    def stages_list(self) -> list[nn.Module]:
        return list(self.stages)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output, shallow (sharp) to deep (semantic)."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class CamNet(nn.Module):
    """Backbone + bias-free 1×1 head with C channels (CLIMS: ``classifier``, no bias).

    ``forward`` returns raw logits B×C×h×w (CLIMS applies the sigmoid in the loss
    code, extraction applies ReLU); keeping logits lets one module serve both.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        *,
        freeze_bn: bool = False,
        arch: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_classes = int(n_classes)
        self.classifier = nn.Conv2d(backbone.out_channels, self.n_classes, 1, bias=False)
        self.freeze_bn = bool(freeze_bn)
        self.arch: dict[str, Any] = dict(arch or {})
        self.register_buffer(
            "_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in backbone.stem_parameters():
            p.requires_grad_(False)

    @property
    def stride(self) -> int:
        """Output stride: input size / logit-map size (for sizes divisible by it)."""
        return int(self.backbone.stride)

    @property
    def out_channels(self) -> int:
        return int(self.backbone.out_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map of [0, 1] images (the affinity stage reuses it, frozen)."""
        return self.backbone((x - self._mean) / self._std)

    def feature_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All stage outputs of [0, 1] images; the last one is :meth:`features`.

        The boundary network reads these (IRNet's edge branch): the deep map alone
        only tells objects from background and cannot place a boundary.
        """
        return self.backbone.levels((x - self._mean) / self._std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU of the head output: the class activation maps used for extraction."""
        return F.relu(self.forward(x))

    def freeze_stages(self, n: int) -> None:
        """Stop gradients into the first ``n`` backbone stages (after the stem).

        IRNet's CAM classifier detaches after layer2, so conv1 to layer2 keep their
        ImageNet weights (``n = 2``); the stem is always frozen.
        """
        stages = self.backbone.stages_list()
        if not 0 <= n <= len(stages):
            raise ValueError(f"freeze_stages: n must be in 0..{len(stages)}, got {n}")
        for stage in stages[:n]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def set_freeze_bn(self, freeze: bool) -> None:
        """Choose BN's training mode for the next training (recorded in ``arch``).

        IRNet's CAM classifier fixes BN (ImageNet statistics); the CLIMS/POLE CAM stage
        fine-tunes from it with BN in train mode (batch statistics).
        """
        self.freeze_bn = bool(freeze)
        self.arch["freeze_bn"] = self.freeze_bn

    def train(self, mode: bool = True) -> CamNet:
        """Standard train/eval, except BN layers stay in eval mode when ``freeze_bn`` (IRNet)."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def param_groups(self, lr: float, head_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Backbone vs. new head (CLIMS ``trainable_parameters``); frozen parameters left out."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        return [
            {
                "params": backbone,
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "name": "backbone",
            },
            {
                "params": head,
                "lr": float(head_lr),
                "weight_decay": float(weight_decay),
                "name": "head",
            },
        ]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise ValueError(f"{path}: unreadable weights file ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (expected a mapping name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load a local state-dict file into ``backbone``; one clear line on any mismatch.

    An ImageNet classifier's ``fc.*`` entries are ignored; everything else must match
    exactly (names and shapes), so a file of another architecture is refused rather
    than half-loaded.
    """
    path = Path(path)
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = mismatch_summary(missing, unexpected, wrong)
        raise ValueError(f"{path}: state dict does not match {name}: " + ", ".join(parts))
    backbone.load_state_dict(state, strict=True)


# Backbone registry: name -> builder(widths=, strides=) of a module with the CamNet backbone
# interface. A new backbone is one class plus one entry here.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet50": lambda widths, strides: ResNet50Backbone(strides),
    "mini": lambda widths, strides: MiniBackbone(widths, strides),
}


def build_cam_net(
    backbone: str = "resnet50",
    n_classes: int = 20,
    *,
    strides: Sequence[int] = (2, 2, 2, 1),
    widths: Sequence[int] = (32, 64, 128, 256),
    weights: str | os.PathLike | None = None,
    freeze_bn: bool | None = None,
) -> CamNet:
    """Build a :class:`CamNet`.

    Args:
        backbone: ``"resnet50"`` (paper) or ``"mini"`` (demo world).
        n_classes: C, the number of foreground classes (head channels).
        strides: resnet50: strides of conv1, layer2, layer3, layer4 (IRNet; (2,2,2,1) →
            output stride 16). mini: one stride per stage (e.g. (2,2,1,1) → 4).
        widths: channels per stage of the mini backbone (ignored for resnet50).
        weights: optional local state-dict file for the backbone (torchvision names
            for resnet50; e.g. ImageNet weights). Nothing is ever downloaded.
        freeze_bn: keep BN layers in eval mode while training (IRNet's FixedBatchNorm).
            Default: True for resnet50, False for mini (no pretrained statistics).

    The kwargs (without ``weights``) are stored on the net as ``net.arch`` so a
    checkpoint can rebuild it (:func:`pole_core.cam.train.load_cam_net`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: unknown {backbone!r}; expected one of {tuple(BACKBONES)}")
    strides = tuple(int(s) for s in strides)
    widths = tuple(int(w) for w in widths)
    if any(s < 1 for s in strides):
        raise ValueError(f"strides must be >= 1, got {strides}")
    if freeze_bn is None:
        freeze_bn = backbone == "resnet50"
    body = BACKBONES[backbone](widths=widths, strides=strides)
    if weights is not None:
        load_backbone_weights(body, weights, backbone)
    arch = {
        "backbone": backbone,
        "n_classes": int(n_classes),
        "strides": list(strides),
        "widths": list(widths),
        "freeze_bn": bool(freeze_bn),
    }
    return CamNet(body, n_classes, freeze_bn=bool(freeze_bn), arch=arch)


# IRNet's Net (net/resnet50_cam.py) wraps the ResNet as ``resnet50.*`` and, sharing the same
# modules, as ``stage1`` (conv1, bn1, relu, maxpool, layer1) .. ``stage4``; its saved file
# holds both spellings. Either one maps onto the torchvision names of ResNet50Backbone.
_IRNET_STAGES = {
    "stage1.0.": "conv1.",
    "stage1.1.": "bn1.",
    "stage1.4.": "layer1.",
    "stage2.0.": "layer2.",
    "stage3.0.": "layer3.",
    "stage4.0.": "layer4.",
}


def irnet_cam_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of IRNet's ``res50_cam.pth`` (step 1) to :class:`CamNet`'s.

    ``resnet50.<name>`` and ``stageN.M.<name>`` become ``backbone.<torchvision name>``,
    ``classifier.weight`` stays; anything else (``resnet50.fc.*``) is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("resnet50."):
            name = key.removeprefix("resnet50.")
            if not name.startswith("fc."):
                out[f"backbone.{name}"] = value
        elif key.startswith("classifier."):
            out[key] = value
        else:
            for old, new in _IRNET_STAGES.items():
                if key.startswith(old):
                    out.setdefault(f"backbone.{new}{key.removeprefix(old)}", value)
                    break
    return out


def import_irnet_cam(
    path: str | os.PathLike, n_classes: int = 20, strides: Sequence[int] = (2, 2, 2, 1)
) -> CamNet:
    """A ResNet-50 :class:`CamNet` with the weights of IRNet's released ``res50_cam.pth``.

    BN stays fixed, as IRNet trained it; the CAM stage decides its own BN mode.
    """
    path = Path(path)
    state = irnet_cam_state_dict(_read_state_dict(path))
    net = build_cam_net("resnet50", n_classes, strides=strides, freeze_bn=True)
    own = net.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = mismatch_summary(missing, unexpected, wrong)
        raise ValueError(
            f"{path}: not IRNet's ResNet-50 CAM classifier for {n_classes} classes: "
            + ", ".join(parts)
        )
    net.load_state_dict(state, strict=False)
    return net
