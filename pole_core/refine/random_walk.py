"""Random-walk propagation of CAMs over boundary-aware affinities (IRNet ``propagate_to_edge``).

The transition matrix comes from the boundary map: affinities within ``radius``
on the stride-4 grid (1 − max boundary along the path, see
:mod:`pole_core.refine.affinity`), raised to ``beta`` to sharpen them,
made symmetric with self-loops of 1, and normalised per column. CAM scores,
first damped on boundaries (``cam · (1 − boundary)``, IRNet; ``damp_boundary=False``
walks the CAM as it is), are propagated for ``2^exp_times`` steps.

Why the damping can be turned off: it assumes boundaries are thin lines around objects.
Where an object is only a few pixels wide (small images), the boundary map covers most
of the object, and the damping erases the object's CAM before the walk can spread it.

Two equal ways to take those steps:

* dense (grid of at most ``dense_max_nodes`` nodes): build T (n × n) and square it
  ``exp_times`` times, as IRNet does on the GPU;
* sparse (larger grids): T is never formed; each step is a local weighted average
  over the (2r−1)² window, repeated ``2^exp_times`` times. Memory stays
  O(k · n · r²) instead of O(n²) (a VOC image has ~12 k nodes: 0.55 GB dense).
  Measured on one CPU core (k = 3, 2^8 steps): 32×32 grid 0.11 s either way,
  48×48 dense 1.2 s vs sparse 0.27 s, hence the default ``dense_max_nodes=1024``.

Background is not propagated: as in IRNet ``make_sem_seg_labels``, the propagated
scores are normalised by their global maximum and a constant background score
``bg_thresh`` is added before the argmax (:func:`rw_to_label`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cam.evaluate import cam_to_label
from ..device import resolve_device
from ..io.cam_store import open_cams, read_cam
from ..io.png import read_mask, write_mask
from .affinity import (
    BoundaryNet,
    affinity_from_boundary,
    grid_size,
    path_index,
    predict_boundary,
)
from .crf import CRFParams, crf_refine_label

NORMALIZE = ("global", "class")  # how rw_to_label scales the walked scores before the threshold

__all__ = ["transition_weights", "random_walk", "rw_to_label", "run_random_walk_shard"]


def transition_weights(boundary: Tensor, *, beta: float = 10, radius: int = 5) -> Tensor:
    """Symmetric weights W = aff^β over the full (2r−1)² window: [(2r−1)², h, w].

    ``W[K, y, x]`` links (y, x) to (y, x) + window offset K (centre = self-loop, 1);
    0 for pairs outside the radius or the grid.
    """
    pi = path_index(radius)
    r1 = radius - 1
    side = 2 * radius - 1
    h, w = boundary.shape
    half = affinity_from_boundary(boundary.float()[None, None], pi)[0].pow(beta)  # [P,h,w]
    padded = F.pad(half, (r1, r1, r1, r1))
    full = boundary.new_zeros((side * side, h, w), dtype=torch.float32)
    full[r1 * side + r1] = 1.0
    for p, (dy, dx) in enumerate(pi.offsets.tolist()):
        full[(dy + r1) * side + (dx + r1)] = half[p]
        # the reverse pair: (y,x) → (y,x) − o has the weight computed at source (y,x) − o
        full[(r1 - dy) * side + (r1 - dx)] = padded[p, r1 - dy : r1 - dy + h, r1 - dx : r1 - dx + w]
    return full


def _dense_transition(weights: Tensor, h: int, w: int, radius: int) -> Tensor:
    """n×n column-normalised transition matrix from window weights [(2r−1)², h, w]."""
    r1 = radius - 1
    side = 2 * radius - 1
    n = h * w
    dev = weights.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    dense = torch.zeros((n, n), dtype=torch.float32, device=dev)
    for k in range(side * side):
        dy, dx = k // side - r1, k % side - r1
        ty, tx = ys + dy, xs + dx
        ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w) & (weights[k] > 0)
        dense[(ys * w + xs)[ok], (ty * w + tx)[ok]] = weights[k][ok]
    return dense / dense.sum(dim=0, keepdim=True)


def random_walk(
    cam_s4: Tensor | np.ndarray,
    boundary: Tensor | np.ndarray,
    *,
    beta: float = 10,
    exp_times: int = 8,
    radius: int = 5,
    dense_max_nodes: int = 1024,
    damp_boundary: bool = True,
) -> Tensor:
    """Propagate CAM scores [k,h,w] over the boundary map [h,w]; returns [k,h,w] on cam's device.

    Dense repeated squaring (IRNet) when h·w ≤ ``dense_max_nodes``, otherwise
    2^exp_times local averaging steps; both compute x·T^(2^exp_times), with
    x = cam · (1 − boundary) (IRNet) or, ``damp_boundary=False``, x = cam.
    """
    cam = torch.as_tensor(cam_s4).float()
    edge = torch.as_tensor(boundary).float().to(cam.device)
    if cam.dim() != 3 or edge.shape != cam.shape[1:]:
        raise ValueError(
            f"random_walk: cam {tuple(cam.shape)} and boundary {tuple(edge.shape)} differ"
        )
    k, h, w = cam.shape
    if k == 0:
        return cam.clone()
    weights = transition_weights(edge, beta=beta, radius=radius)
    x = cam * (1.0 - edge) if damp_boundary else cam
    n = h * w
    if n <= dense_max_nodes:
        trans = _dense_transition(weights, h, w, radius)
        for _ in range(exp_times):
            trans = trans @ trans
        return (x.reshape(k, n) @ trans).reshape(k, h, w)
    r1 = radius - 1
    side = 2 * radius - 1
    wflat = weights.reshape(side * side, n)
    norm = wflat.sum(dim=0)
    for _ in range(2**exp_times):
        unf = F.unfold(F.pad(x[:, None], (r1, r1, r1, r1)), kernel_size=side)  # [k, K, n]
        x = ((unf * wflat).sum(dim=1) / norm).reshape(k, h, w)
    return x


def rw_to_label(
    propagated: Tensor | np.ndarray,
    keys: Sequence[int] | np.ndarray,
    out_hw: tuple[int, int],
    *,
    bg_thresh: float = 0.25,
    stride: int = 4,
    normalize: str = "global",
) -> np.ndarray:
    """Label map uint8 H×W (0 bg, keys + 1) from propagated scores on the grid of ``stride``.

    Upsample ×stride (bilinear), crop to ``out_hw``, divide by the maximum — over
    all classes (``normalize="global"``, IRNet) or per class (``"class"``: a small
    object whose walked score stays below a large one's keeps its own scale) —
    then label as a CAM is labelled (:func:`pole_core.cam.evaluate.cam_to_label`: argmax
    against the constant background score ``bg_thresh``, channel c → ``keys[c-1] + 1``).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"rw_to_label: normalize must be one of {NORMALIZE}, not {normalize!r}")
    rw = torch.as_tensor(propagated).float()
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    h, w = out_hw
    if rw.shape[0] == 0:
        return np.zeros((h, w), dtype=np.uint8)
    up = rw
    if stride != 1:
        up = F.interpolate(rw[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    up = up[:, :h, :w]
    if up.shape[1:] != (h, w):
        raise ValueError(f"rw_to_label: grid {tuple(rw.shape[1:])} too small for {out_hw}")
    if normalize == "global":
        up = up / up.max().clamp_min(1e-5)
    else:
        up = up / up.flatten(1).max(dim=1).values.clamp_min(1e-5)[:, None, None]
    return cam_to_label(up.cpu().numpy(), keys, bg_thresh)


def run_random_walk_shard(
    dataset: Any,
    ids: Sequence[str],
    cams_h5: str | os.PathLike,
    net: BoundaryNet | Callable[[Tensor], Tensor],
    out_dir: str | os.PathLike,
    *,
    beta: float = 10,
    exp_times: int = 8,
    radius: int = 5,
    bg_thresh: float = 0.25,
    normalize: str = "global",
    damp_boundary: bool = True,
    dense_max_nodes: int = 1024,
    stride: int | None = None,
    crf: CRFParams | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, int]:
    """Write pseudo-masks ``out_dir/<id>.png`` (palette PNG) for ``ids``, skipping complete files.

    ``net`` is a trained :class:`BoundaryNet` (boundary by
    :func:`predict_boundary`, flip-averaged) or any callable image tensor
    1×3×H×W → boundary [h,w]. The walk runs on the grid of ``stride`` (default:
    the net's, else 4): at 4 the CAMs are the network's stride-4 ``cam_s4``
    (IRNet); at other strides the full-resolution CAM is area-averaged onto the grid.
    ``normalize`` is :func:`rw_to_label`'s, ``damp_boundary`` :func:`random_walk`'s.
    ``crf`` (the terms of :func:`~pole_core.refine.crf.crf_refine_label`) adds a final
    dense CRF over each mask; ``None`` (IRNet) writes the walk's argmax.
    Returns ``{"done", "skipped"}``.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stride is None:
        stride = net.stride if isinstance(net, BoundaryNet) else 4
    if isinstance(net, BoundaryNet):
        net.to(dev).eval()

        def boundary_fn(x: Tensor) -> Tensor:
            return predict_boundary(net, x)
    else:
        boundary_fn = net

    todo = []
    for image_id in ids:
        path = out_dir / f"{image_id}.png"
        try:
            if path.is_file():
                read_mask(path)
                continue
        except ValueError:
            pass
        todo.append(image_id)
    it: Any = todo
    if progress and todo:
        from tqdm import tqdm

        it = tqdm(todo, desc="random_walk", leave=False)
    with open_cams(cams_h5) as f, torch.no_grad():
        for image_id in it:
            img = np.ascontiguousarray(dataset.image(image_id))
            x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)[None].to(dev)
            edge = boundary_fn(x).float()
            cam, keys = read_cam(f, image_id, stride4=stride == 4)
            cam_t = torch.from_numpy(cam).to(dev)
            if stride not in (1, 4):
                size = grid_size(*img.shape[:2], stride)
                cam_t = F.adaptive_avg_pool2d(cam_t[None], size)[0]
            if edge.shape != cam_t.shape[1:]:
                edge = F.interpolate(
                    edge[None, None], size=cam_t.shape[1:], mode="bilinear", align_corners=False
                )[0, 0]
            rw = random_walk(
                cam_t,
                edge,
                beta=beta,
                exp_times=exp_times,
                radius=radius,
                dense_max_nodes=dense_max_nodes,
                damp_boundary=damp_boundary,
            )
            label = rw_to_label(
                rw, keys, img.shape[:2], bg_thresh=bg_thresh, stride=stride, normalize=normalize
            )
            if crf is not None:
                label = crf_refine_label(img, label, keys, params=crf)
            write_mask(out_dir / f"{image_id}.png", label)
    return {"done": len(todo), "skipped": len(ids) - len(todo)}
