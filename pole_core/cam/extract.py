"""Multi-scale CAM extraction (Stage C, IRNet/CLIMS ``make_cam``) into the HDF5 CAM store.

Per image and per scale s in ``scales``: the image is rescaled (bicubic, anti-aliased,
size ``round(H*s) x round(W*s)``), run through ``net.cam`` together with its horizontal
flip; ReLU(CAM) of the flip is flipped back and added to the image's (at the CAM
resolution, as IRNet's ``CAM.forward`` does), then upsampled bilinearly to the stride-4
grid ``ceil(H/4) x ceil(W/4)`` and to ``ceil(H/stride)*stride`` (cropped to H x W, IRNet's
``strided_up_size``). Maps are summed over scales; only the classes of the image label
are kept and each is divided by its max + 1e-5.

:func:`extract_cams`: images of equal size are batched; every scale of a batch is one
forward pass over images and flips together; only the labelled (image, class) maps are
upsampled, as one tensor; a DataLoader decodes images in parallel with compute.

IRNet/CLIMS's per-image loop of the same arithmetic (batch 1, one forward per scale,
post-processing per image) is not part of the library: it lives in ``benchmarks/extract.py``
as the speed baseline of ``make bench`` and the equivalence oracle of the tests. Both use
:func:`rescale_images`, so they see the same pixels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..device import autocast, resolve_device
from ..io.cam_store import CamWriter

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)
EPS = 1e-5
# Input pixels per forward pass (images and flips together), by device type; see batch_cams.
CHUNK_PIXELS = {"cpu": 2**17, "cuda": 2**24}

# (image_id, keys int64[k], cam float32[k,H,W], cam_s4 float32[k,h4,w4])
CamItem = tuple[str, np.ndarray, np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- geometry


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Image size at ``scale``: ``round(H*s), round(W*s)`` (skimage.rescale, as IRNet)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``ceil(H/stride), ceil(W/stride)``: the grid of a stride-``stride`` feature map."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The strided grid scaled back up (>= size); upsampling there then cropping keeps cells aligned."""
    h, w = strided_size(size, stride)
    return h * stride, w * stride


def rescale_images(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Rescale float [0,1] images B×3×H×W (bicubic, anti-aliased, clamped); identity at 1.0."""
    if scale == 1.0:
        return x
    size = scaled_size((x.shape[-2], x.shape[-1]), scale)
    out = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def image_keys(labels: np.ndarray) -> np.ndarray:
    """Class indices present in a multi-hot image label (IRNet: ``nonzero(label)``)."""
    return np.flatnonzero(np.asarray(labels) > 0).astype(np.int64)


def shard_ids(ids: Sequence[str], n_shards: int, shard: int) -> list[str]:
    """The ``shard``-th of ``n_shards`` contiguous, near-equal slices of ``ids`` (Snakemake scatter).

    Sizes differ by at most one; concatenating all shards in order gives ``ids`` back.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must be in 0..{n_shards - 1}, got {shard}")
    n = len(ids)
    base, extra = divmod(n, n_shards)
    start = shard * base + min(shard, extra)
    stop = start + base + (1 if shard < extra else 0)
    return list(ids[start:stop])


def _default_attrs(net: torch.nn.Module, dataset: Any, scales: Sequence[float], flip: bool) -> dict:
    return {
        "classes": list(dataset.class_names),
        "scales": [float(s) for s in scales],
        "flip": bool(flip),
        "stride": int(net.stride),
    }


def _device_for(net: torch.nn.Module, device: torch.device | str) -> torch.device:
    """The device to run on ("auto" allowed); the net must already live there (we never move it)."""
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    param = next(net.parameters(), None)
    if param is not None and param.device.type != dev.type:
        raise ValueError(f"CAM net is on {param.device} but extraction was asked to run on {dev}")
    return dev


def _check_image(image_id: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image {image_id!r}: expected uint8 H×W×3, got {image.dtype} {tuple(image.shape)}"
        )
    return image


# --------------------------------------------------------------------------- batched extraction


class _Batches(Dataset):
    """Decodes one batch of equal-size images per item (runs in DataLoader workers)."""

    def __init__(self, dataset: Any, batches: list[list[str]]):
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[list[str], torch.Tensor, list[np.ndarray]]:
        ids = self.batches[i]
        images = [_check_image(j, self.dataset.image(j)) for j in ids]
        keys = [image_keys(self.dataset.labels(j)) for j in ids]
        return ids, torch.from_numpy(np.stack(images)), keys


def _image_size(dataset: Any, image_id: str) -> tuple[int, int]:
    if hasattr(dataset, "image_size"):
        h, w = dataset.image_size(image_id)
    else:
        h, w = np.asarray(dataset.image(image_id)).shape[:2]
    return int(h), int(w)


def group_by_size(dataset: Any, ids: Sequence[str], batch_size: int) -> list[list[str]]:
    """Batches of at most ``batch_size`` ids whose images share one size (first-seen order)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for image_id in ids:
        groups.setdefault(_image_size(dataset, image_id), []).append(image_id)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def batch_cams(
    net: torch.nn.Module,
    images: torch.Tensor,
    keys: Sequence[np.ndarray],
    *,
    scales: Sequence[float],
    flip: bool,
    amp: bool = True,
    channels_last: bool = True,
    chunk_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised CAMs of one batch of equal-size images (float B×3×H×W on the net's device).

    Returns ``(cam P×H×W, cam_s4 P×h4×w4, counts B)`` float32, P = total labelled classes,
    the rows of image i being ``counts[:i].sum() ...`` in key order. Call under inference mode.
    """
    b, _, h, w = images.shape
    device = images.device
    stride = int(net.stride)
    s4 = strided_size((h, w), 4)
    up = strided_up_size((h, w), stride)
    counts = torch.tensor([len(k) for k in keys], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(b), counts).to(device)
    cols = torch.from_numpy(np.concatenate([*keys, np.zeros(0, np.int64)])).to(device)
    n_pairs = int(counts.sum())
    budget = chunk_pixels or CHUNK_PIXELS.get(device.type, CHUNK_PIXELS["cuda"])
    acc_s4 = torch.zeros((1, n_pairs, *s4), device=device)
    acc_up = torch.zeros((1, n_pairs, *up), device=device)
    for s in scales:
        xs = rescale_images(images, s)
        # Forward in chunks of <= chunk_pixels input pixels: past that, CPU convs fall out of
        # cache and a bigger batch gets slower per image (measured on the demo net).
        chunk = max(1, budget // (xs.shape[-2] * xs.shape[-1] * (2 if flip else 1)))
        cams = []
        for i in range(0, b, chunk):
            x = xs[i : i + chunk]
            n = x.shape[0]
            if flip:
                x = torch.cat([x, x.flip(-1)], 0)  # image and flip in one forward
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, enabled=amp, dtype=torch.float16):
                cam = net.cam(x)
            cam = F.relu(cam.float())
            cams.append(cam[:n] + cam[n:].flip(-1) if flip else cam)
        if n_pairs == 0:
            continue
        cam = torch.cat(cams, 0) if len(cams) > 1 else cams[0]
        sel = cam[rows, cols][None]  # 1×P×h×w: only the labelled maps are upsampled
        acc_s4 += F.interpolate(sel, s4, mode="bilinear", align_corners=False)
        acc_up += F.interpolate(sel, up, mode="bilinear", align_corners=False)
    cam_s4 = acc_s4[0]
    cam_full = acc_up[0, :, :h, :w]
    cam_s4 = cam_s4 / (cam_s4.amax(dim=(1, 2), keepdim=True) + EPS)
    cam_full = cam_full / (cam_full.amax(dim=(1, 2), keepdim=True) + EPS)
    return cam_full, cam_s4, counts


def iter_cams(
    net: torch.nn.Module,
    dataset: Any,
    ids: Sequence[str],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    batch_size: int = 16,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = True,
    channels_last: bool = True,
    chunk_pixels: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Iterator[CamItem]:
    """Batched extraction; yields ``(id, keys, cam, cam_s4)`` numpy arrays of ``out_dtype``.

    Images come out grouped by size (the batches), not in the order of ``ids``.
    """
    device = _device_for(net, device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = group_by_size(dataset, ids, batch_size)
    loader = DataLoader(
        _Batches(dataset, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for batch_ids, images, keys in loader:
                keys = [np.asarray(k, dtype=np.int64) for k in keys]  # the loader made them tensors
                x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                cam, cam_s4, counts = batch_cams(
                    net,
                    x,
                    keys,
                    scales=scales,
                    flip=flip,
                    amp=amp,
                    channels_last=channels_last,
                    chunk_pixels=chunk_pixels,
                )
                cam = cam.to(out_dtype).cpu().numpy()
                cam_s4 = cam_s4.to(out_dtype).cpu().numpy()
                start = 0
                for image_id, k, n in zip(batch_ids, keys, counts.tolist(), strict=True):
                    yield image_id, k, cam[start : start + n], cam_s4[start : start + n]
                    start += n
    finally:
        net.train(was_training)


def extract_cams(
    net: torch.nn.Module,
    dataset: Any,
    ids: Sequence[str],
    out_h5: str | os.PathLike,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    batch_size: int = 16,
    workers: int = 0,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    store_stride4: bool = True,
    amp: bool = True,
    channels_last: bool = True,
    chunk_pixels: int | None = None,
    progress: bool = True,
) -> dict:
    """Extract multi-scale CAMs of ``ids`` into ``out_h5`` (atomic); returns timing stats.

    ``attrs`` are added to the file's root attributes (defaults: classes, scales, flip,
    stride; pass e.g. ``source=<checkpoint hash>``). AMP applies on CUDA only. The net must
    already be on ``device`` ("auto" allowed). Peak memory is one batch: at most
    ``batch_size`` images' labelled full-resolution maps in float32.
    """
    device = _device_for(net, device)
    t0 = time.perf_counter()
    all_attrs = {**_default_attrs(net, dataset, scales, flip), **(attrs or {})}
    n = 0
    items = iter_cams(
        net,
        dataset,
        ids,
        scales=scales,
        flip=flip,
        batch_size=batch_size,
        workers=workers,
        device=device,
        amp=amp,
        channels_last=channels_last,
        chunk_pixels=chunk_pixels,
        out_dtype=torch.float16,  # the store's dtype: convert on the device, copy half the bytes
    )
    with (
        CamWriter(out_h5, all_attrs) as writer,
        tqdm(total=len(ids), disable=not progress, desc="cams", unit="img") as bar,
    ):
        for image_id, keys, cam, cam_s4 in items:
            writer.add(image_id, cam, keys, cam_s4 if store_stride4 else None)
            n += 1
            bar.update()
    seconds = time.perf_counter() - t0
    return {
        "n_images": n,
        "seconds": round(seconds, 4),
        "images_per_s": round(n / seconds, 3) if seconds else None,
        "device": str(device),
        "batch_size": batch_size,
        "workers": workers,
        "scales": [float(s) for s in scales],
        "flip": bool(flip),
    }
