"""Inter-pixel affinity from a class-boundary map (the boundary branch of IRNet).

IRNet trains two heads on a frozen backbone: a class-boundary map and a
displacement field. The displacement field only serves *instance* masks
(it points pixels to instance centroids); semantic pseudo-masks, the output of
this pipeline, use only the boundary map, so only that branch is built here.

Affinity between two pixels i, j on the stride-4 grid within ``radius`` is
``1 − max boundary on the straight path i→j``: two pixels are alike unless a
boundary separates them. The net is trained from the confident CRF labels
(:func:`pole_core.refine.crf.cam_to_ir_label`) downsampled to stride 4: pairs of
the same label are positives (background pairs and foreground pairs weighted
half each), pairs of different labels negatives, pairs touching 255 ignored.

Our pair layout differs from IRNet's flat index lists but is the same set of
pairs: for each offset (dy, dx) of the half-neighbourhood (dy > 0, or dy = 0
and dx > 0, with dy² + dx² < radius²) every grid pixel is a source and the
pixel at +offset its destination. Paths are gathered from an ``unfold`` of the
boundary map padded with 1 (a pair leaving the image has affinity 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import autocast
from ..io.checkpoint import load_checkpoint, seed_everything
from ..training import RunOptions, sgd_loop, steps_per_epoch

__all__ = [
    "PathIndex",
    "path_index",
    "affinity_from_boundary",
    "affinity_labels",
    "affinity_loss",
    "FeatureExtractor",
    "BoundaryHead",
    "BoundaryNet",
    "AffinityTrainParams",
    "train_affinity",
    "predict_boundary",
    "load_affinity_net",
    "grid_size",
    "stride4_size",
    "downsample_labels",
]

IGNORE = 255


def grid_size(h: int, w: int, stride: int = 4) -> tuple[int, int]:
    """The grid of an H×W image at ``stride``: (ceil(H/stride), ceil(W/stride))."""
    return -(-h // stride), -(-w // stride)


def stride4_size(h: int, w: int) -> tuple[int, int]:
    """The stride-4 grid of an H×W image: (ceil(H/4), ceil(W/4)), the size of ``cam_s4``."""
    return grid_size(h, w, 4)


# --------------------------------------------------------------------------- path index


@dataclass(frozen=True)
class PathIndex:
    """Neighbour offsets within ``radius`` and the grid cells on each straight path.

    ``offsets``: int64 [P, 2] (dy, dx) of the half-neighbourhood, one entry per
    unordered pair. ``window``: (r, 2r − 1), the unfold kernel covering every
    offset, dy ∈ [0, r), dx ∈ (−r, r). ``groups``: paths grouped by their number of
    cells, each a (rows into ``offsets``, int64 [n, L] flat window positions with
    the destination first). Grouping by length lets one gather + max serve many
    paths, as IRNet does.
    """

    radius: int
    offsets: np.ndarray
    window: tuple[int, int]
    groups: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def n_offsets(self) -> int:
        return int(self.offsets.shape[0])

    def window_pos(self, dy: int, dx: int) -> int:
        """Flat index of offset (dy, dx) in the unfold window."""
        return dy * self.window[1] + dx + (self.radius - 1)


def _path_cells(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid cells within distance < 1 of the segment (0,0)→(dy,dx), destination first (IRNet rule)."""
    len_sq = dy * dy + dx * dx
    cells = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / len_sq < 1:
                cells.append((y, x))
    cells.sort(key=lambda c: -abs(c[0]) - abs(c[1]))
    return cells


_PATH_CACHE: dict[int, PathIndex] = {}


def path_index(radius: int) -> PathIndex:
    """Build (and cache) the :class:`PathIndex` for an integer ``radius`` ≥ 2."""
    radius = int(radius)
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    if radius in _PATH_CACHE:
        return _PATH_CACHE[radius]
    offsets = [(0, x) for x in range(1, radius)]
    offsets += [
        (y, x)
        for y in range(1, radius)
        for x in range(-radius + 1, radius)
        if x * x + y * y < radius * radius
    ]
    window = (radius, 2 * radius - 1)
    by_len: dict[int, tuple[list[int], list[list[int]]]] = {}
    for row, (dy, dx) in enumerate(offsets):
        cells = _path_cells(dy, dx)
        assert cells[0] == (dy, dx)
        flat = [cy * window[1] + cx + radius - 1 for cy, cx in cells]
        rows, paths = by_len.setdefault(len(cells), ([], []))
        rows.append(row)
        paths.append(flat)
    groups = tuple(
        (np.asarray(rows, dtype=np.int64), np.asarray(paths, dtype=np.int64))
        for _, (rows, paths) in sorted(by_len.items())
    )
    pi = PathIndex(radius, np.asarray(offsets, dtype=np.int64), window, groups)
    _PATH_CACHE[radius] = pi
    return pi


def _unfold_window(x: Tensor, pi: PathIndex, value: float) -> Tensor:
    """[B,1,h,w] → [B, r·(2r−1), h·w]: every window offset's value for every source pixel."""
    r = pi.radius
    padded = F.pad(x, (r - 1, r - 1, 0, r - 1), mode="constant", value=value)
    return F.unfold(padded, kernel_size=pi.window)


def affinity_from_boundary(boundary: Tensor, radius: int | PathIndex) -> Tensor:
    """Affinity [B, P, h, w] from a boundary map [B,1,h,w] or [h,w] (values in [0,1]).

    ``aff[b, p, y, x] = 1 − max boundary on the path (y,x) → (y,x)+offsets[p]``;
    0 where the destination lies outside the grid. Differentiable (the max
    routes the gradient to the strongest boundary cell, as in IRNet).
    """
    pi = radius if isinstance(radius, PathIndex) else path_index(radius)
    if boundary.dim() == 2:
        boundary = boundary[None, None]
    if boundary.dim() != 4 or boundary.shape[1] != 1:
        raise ValueError(f"boundary must be [B,1,h,w] or [h,w], got {tuple(boundary.shape)}")
    b, _, h, w = boundary.shape
    unf = _unfold_window(boundary, pi, 1.0)  # [B, K, hw]
    out = boundary.new_empty((b, pi.n_offsets, h * w))
    for rows, paths in pi.groups:
        idx = torch.as_tensor(paths, device=boundary.device)
        vals = unf[:, idx.reshape(-1)].view(b, *idx.shape, h * w)
        out[:, torch.as_tensor(rows, device=boundary.device)] = vals.amax(dim=2)
    return (1.0 - out).view(b, pi.n_offsets, h, w)


def affinity_labels(labels: Tensor, radius: int | PathIndex) -> tuple[Tensor, Tensor, Tensor]:
    """Pair targets from stride-4 labels [B,h,w] (0 bg, 1..C, 255 ignore).

    Returns float masks (bg_pos, fg_pos, neg), each [B, P, h, w]: same-label
    background pairs, same-label foreground pairs, different-label pairs; any
    pair touching 255 or leaving the grid is in none of them.
    """
    pi = radius if isinstance(radius, PathIndex) else path_index(radius)
    b, h, w = labels.shape
    lab = labels.to(torch.float32)[:, None]
    unf = _unfold_window(lab, pi, float(IGNORE))  # [B, K, hw]
    dst_pos = torch.as_tensor(
        [pi.window_pos(int(dy), int(dx)) for dy, dx in pi.offsets], device=labels.device
    )
    dst = unf[:, dst_pos].view(b, pi.n_offsets, h, w)
    src = lab.expand_as(dst)
    valid = (src != IGNORE) & (dst != IGNORE)
    same = src == dst
    pos = valid & same
    bg_pos = (pos & (src == 0)).float()
    fg_pos = (pos & (src > 0)).float()
    neg = (valid & ~same).float()
    return bg_pos, fg_pos, neg


def affinity_loss(aff: Tensor, labels: Tensor, radius: int | PathIndex) -> dict[str, Tensor]:
    """IRNet's boundary loss: {"bg_pos", "fg_pos", "neg", "total"}.

    pos = −log(aff) averaged over positive pairs (background and foreground
    halves weighted ½ each, so the usually larger background does not dominate),
    neg = −log(1 + 1e-5 − aff) over negative pairs, total = (pos + neg) / 2
    (IRNet's total without the displacement terms). Sums run over the whole batch.
    """
    bg_pos, fg_pos, neg = affinity_labels(labels, radius)
    aff = aff.float()
    eps = 1e-5
    bg_loss = (-bg_pos * torch.log(aff + eps)).sum() / (bg_pos.sum() + eps)
    fg_loss = (-fg_pos * torch.log(aff + eps)).sum() / (fg_pos.sum() + eps)
    neg_loss = (-neg * torch.log(1.0 + eps - aff)).sum() / (neg.sum() + eps)
    total = (bg_loss / 2 + fg_loss / 2 + neg_loss) / 2
    return {"bg_pos": bg_loss, "fg_pos": fg_loss, "neg": neg_loss, "total": total}


# --------------------------------------------------------------------------- network


class FeatureExtractor(nn.Module):
    """Wrap a backbone so that ``forward(x)`` returns a list of feature maps.

    ``fn(module, x)`` picks the features; the default calls ``module.features(x)``
    (the CAM net's contract) and wraps a single tensor in a list. Registered as a
    module so ``.to(device)`` moves it; :class:`BoundaryNet` freezes it.
    """

    def __init__(self, backbone: nn.Module, fn: Callable[[nn.Module, Tensor], Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.fn = fn

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.fn(self.backbone, x) if self.fn is not None else self.backbone.features(x)
        return [out] if isinstance(out, Tensor) else list(out)


class BoundaryHead(nn.Module):
    """IRNet's edge branch: per level 1×1 conv → 32 ch, GroupNorm, upsample to the grid, ReLU;
    concatenate; 1×1 conv → one boundary logit.

    ``context`` > 0 inserts that many 3×3 conv + GroupNorm + ReLU layers on the
    concatenated maps before the last 1×1 conv (IRNet: 0). A 1×1 head can only
    weigh each feature vector on its own; the 3×3 layers let it compare a cell
    with its neighbours, which an edge is, when the frozen features carry no
    edge detectors of their own (a backbone trained from scratch on the demo world).
    """

    def __init__(self, in_channels: Sequence[int], width: int = 32, context: int = 0):
        super().__init__()
        groups = 4 if width % 4 == 0 else 1
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(groups, width))
            for c in in_channels
        )
        cat = width * len(in_channels)
        self.n_context = int(context)
        layers: list[nn.Module] = []
        if self.n_context:
            # mix the levels down to ``width`` first: the 3×3 layers then cost a
            # ``len(in_channels)``-th of convolving the concatenation directly
            layers.append(nn.Conv2d(cat, width, 1, bias=False))
        for _ in range(self.n_context):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.GroupNorm(groups, width),
                nn.ReLU(inplace=True),
            ]
        self.context = nn.Sequential(*layers)
        self.out = nn.Conv2d(width if context else cat, 1, 1, bias=True)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        if len(feats) != len(self.levels):
            raise ValueError(f"boundary head built for {len(self.levels)} levels, got {len(feats)}")
        ups = []
        for f, layer in zip(feats, self.levels, strict=True):
            y = layer(f)
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            ups.append(F.relu(y))
        return self.out(self.context(torch.cat(ups, dim=1)))


class BoundaryNet(nn.Module):
    """Frozen feature extractor + trainable boundary head → boundary map B×1×h×w in [0,1].

    ``extractor(x)`` takes images B×3×H×W in [0,1] and returns a list of feature
    maps at any strides. Pass several levels (``cam_net.feature_levels``, as
    IRNet reads its five ResNet stages): from the deepest map alone the head learns
    objectness, not boundaries (measured on the demo world: boundary score 0.44
    inside objects, the same as on their edges).
    A module with a ``features`` method (the CAM net) or a bound method of a
    module (``cam_net.features``) is wrapped in :class:`FeatureExtractor`, so
    the backbone is registered (``.to()`` moves it) and its features, not its
    logits, are used. Other callables are used as they are. The features are detached and the
    extractor stays in eval mode (frozen BatchNorm), so only the head learns. The output grid is the stride-4 grid of the input,
    (ceil(H/4), ceil(W/4)), the grid of ``cam_s4``. ``in_channels`` is probed
    with a dummy image when not given. Only the head is saved
    (:meth:`head_state_dict`); the extractor belongs to the CAM stage.
    """

    def __init__(
        self,
        extractor: nn.Module | Callable[[Tensor], Sequence[Tensor]],
        in_channels: Sequence[int] | None = None,
        width: int = 32,
        stride: int = 4,
        context: int = 0,
        image_level: bool = False,
    ):
        super().__init__()
        if int(stride) < 1:
            raise ValueError(f"BoundaryNet: stride must be ≥ 1, got {stride}")
        self.stride = int(stride)
        self.image_level = bool(image_level)
        owner = getattr(extractor, "__self__", None)
        if isinstance(owner, nn.Module) and not isinstance(extractor, nn.Module):
            # a bound method such as cam_net.features: keep the module registered, so
            # .to(device) moves it and eval mode is enforced
            extractor = FeatureExtractor(owner, fn=extractor.__func__)
        if isinstance(extractor, nn.Module):
            if not isinstance(extractor, FeatureExtractor) and callable(
                getattr(extractor, "features", None)
            ):
                extractor = FeatureExtractor(
                    extractor
                )  # e.g. the CAM net: use .features, not forward
            self.extractor = extractor
            for p in extractor.parameters():
                p.requires_grad_(False)
        else:
            self._extractor_fn = extractor
        if in_channels is None:
            probe = torch.zeros(1, 3, 64, 64, device=self._extractor_device())
            in_channels = [f.shape[1] for f in self._backbone_features(probe)]
        self.in_channels = [int(c) for c in in_channels]
        levels = self.in_channels + ([3] if self.image_level else [])
        self.head = BoundaryHead(levels, width, context)

    def _extractor_device(self) -> torch.device:
        module = getattr(self, "extractor", None)
        params = list(module.parameters()) if module is not None else []
        return params[0].device if params else torch.device("cpu")

    def _backbone_features(self, x: Tensor) -> list[Tensor]:
        fn = self.extractor if hasattr(self, "extractor") else self._extractor_fn
        if isinstance(fn, nn.Module):
            fn.eval()
        with torch.no_grad():
            out = fn(x)
        out = [out] if isinstance(out, Tensor) else list(out)
        return [f.detach().float() for f in out]

    def _features(self, x: Tensor) -> list[Tensor]:
        """The frozen backbone's levels, plus the image itself when ``image_level``."""
        feats = self._backbone_features(x)
        return [*feats, x.float()] if self.image_level else feats

    def logits(self, x: Tensor) -> Tensor:
        """Boundary logits B×1×h×w on the grid of ``self.stride`` (IRNet: 4)."""
        feats = self._features(x)
        return self.head(feats, grid_size(x.shape[-2], x.shape[-1], self.stride))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))

    def train(self, mode: bool = True) -> BoundaryNet:
        super().train(mode)
        if hasattr(self, "extractor"):
            self.extractor.eval()
        return self

    def spec(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this net around the same extractor."""
        return {
            "in_channels": self.in_channels,
            "width": self.head.levels[0][0].out_channels,
            "stride": self.stride,
            "context": self.head.n_context,
            "image_level": self.image_level,
        }

    def head_state_dict(self) -> dict[str, Tensor]:
        return self.head.state_dict()


def load_affinity_net(
    extractor: nn.Module | Callable[[Tensor], Sequence[Tensor]],
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
) -> BoundaryNet:
    """Rebuild an :class:`BoundaryNet` around ``extractor`` from a file written by :func:`train_affinity`."""
    state = load_checkpoint(path, map_location=map_location)
    spec = {"stride": 4, "context": 0, "image_level": False}  # files older than these options
    spec.update({k: state[k] for k in ("in_channels", "width", *spec) if k in state})
    net = BoundaryNet(extractor, **spec)
    net.head.load_state_dict(state["head"])
    return net


# --------------------------------------------------------------------------- data


def _to_batch(item_list: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
    """Collate {"image", "mask"} items: images as float [0,1] B×3×H×W, masks as int64 B×H×W.

    Accepts float CHW tensors or uint8 HWC arrays for images; other keys are ignored.
    """
    imgs, masks = [], []
    for it in item_list:
        img = it["image"]
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(np.ascontiguousarray(img))
        if img.dtype == torch.uint8:
            img = (
                img.permute(2, 0, 1).float().div(255.0) if img.shape[-1] == 3 else img.float() / 255
            )
        imgs.append(img.float())
        m = it["mask"]
        masks.append(
            torch.as_tensor(np.asarray(m)).long() if not isinstance(m, Tensor) else m.long()
        )
    return torch.stack(imgs), torch.stack(masks)


def downsample_labels(mask: Tensor, stride: int = 4) -> Tensor:
    """B×H×W labels → the B×h×w grid of ``stride`` by nearest sampling (IRNet: ¼, order 0)."""
    if stride == 1:
        return mask.long()
    size = grid_size(mask.shape[-2], mask.shape[-1], stride)
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class AffinityTrainParams:
    """Hyper-parameters of the boundary network (IRNet's train_irn: 3 epochs, batch 32, lr 0.1).

    ``momentum`` 1e-4: IRNet's PolyOptimizer hands weight decay to SGD's momentum slot,
    so its released runs had momentum 1e-4.
    """

    radius: int = 10
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    poly_power: float = 0.9
    seed: int = 0


def train_affinity(
    net: BoundaryNet,
    items: torch.utils.data.Dataset,
    out_path: str | os.PathLike,
    params: AffinityTrainParams,
    run: RunOptions = RunOptions(),
) -> dict[str, Any]:
    """Train the boundary head on CRF labels; save ``{"head", "in_channels", "width", ...}``.

    SGD on the head with the poly schedule ``lr · (1 − step/max_step)^0.9``. Resumable
    (:class:`pole_core.training.TrainLoop`); on CPU a resumed run equals an
    uninterrupted one. Returns ``{"losses": [mean loss per epoch], "steps": int}``.
    """
    p = params
    run = run.resolved()  # "auto" resolved (and logged) once, not by every helper
    dev = run.torch_device()
    pi = path_index(p.radius)
    net.to(dev)
    n = len(items)
    if n == 0:
        raise ValueError("train_affinity: no training items")
    n_steps, drop_last = steps_per_epoch(n, p.batch_size)
    seed_everything(p.seed)
    loop = sgd_loop(
        "train_affinity",
        out_path,
        p,
        net.head.parameters(),
        n_steps=n_steps,
        poly_power=p.poly_power,
        modules={"head": net.head},
        train_modules=[net],  # BoundaryNet.train keeps its frozen backbone in eval mode
        fingerprint={**asdict(p), "n_items": n, **net.spec()},
        run=run,
    )
    # One loader for all epochs: its shuffle draws from the global RNG at each epoch's
    # start, which the partial checkpoint restores.
    loader = torch.utils.data.DataLoader(
        items,
        batch_size=p.batch_size,
        shuffle=True,
        drop_last=drop_last,
        num_workers=run.workers,
        collate_fn=_to_batch,
    )

    def batches(epoch: int) -> torch.utils.data.DataLoader:
        if hasattr(items, "set_epoch"):  # datasets whose augmentation is keyed by epoch
            items.set_epoch(epoch)
        return loader

    def step(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images, masks = batch[0].to(dev), batch[1].to(dev)
        with autocast(dev):
            boundary = net(images)
        aff = affinity_from_boundary(boundary.float(), pi)
        loss = affinity_loss(aff, downsample_labels(masks, net.stride), pi)["total"]
        return loss, {"loss": loss}

    loop.run(batches, step)
    losses = loop.column("loss")
    loop.finish(
        {
            "head": {k: v.detach().cpu() for k, v in net.head.state_dict().items()},
            **net.spec(),
            "radius": p.radius,
            "epochs": p.epochs,
            "losses": losses,
        }
    )
    return {"losses": losses, "steps": loop.step, "resumed_from_epoch": loop.resumed_from_epoch}


@torch.no_grad()
def predict_boundary(net: BoundaryNet, image: Tensor, *, flip: bool = True) -> Tensor:
    """Boundary map [h, w] (stride-4 grid) for one image 3×H×W or 1×3×H×W in [0,1].

    As IRNet's EdgeDisplacement: logits of the image and its mirror are averaged
    (mirror flipped back) before the sigmoid.
    """
    net.eval()
    x = image if image.dim() == 4 else image[None]
    x = x.to(next(net.head.parameters()).device, dtype=torch.float32)
    if flip:
        logits = net.logits(torch.cat([x, x.flip(-1)]))
        logits = (logits[0] + logits[1].flip(-1)) / 2
    else:
        logits = net.logits(x)[0]
    return torch.sigmoid(logits[0].float())
