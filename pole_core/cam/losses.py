"""CLIMS losses (Stage A): CLIP judges the CAM-masked images.

For every class k present in image b (a *pair*), with P_k the sigmoid CAM and X
the image:

    fg = P_k ⊙ X,  bg = (1 − P_k) ⊙ X,  both encoded by the frozen CLIP image encoder
    s(·, t) = cos(·, t) clamped to ``clamp``
    OTM = −log s(fg, t_k)                       (object-to-text matching)
    BTM = −log(1 − s(bg, t_k))                  (background-to-text matching)
    CBS = −Σ_j 1[cos(fg, b_j) > τ] · log(1 − cos(fg, b_j))   (co-occurring background)
    REG = mean(P)                               (area regulariser)

Details the papers leave open, taken from the CLIMS code (CVI-SZU/CLIMS,
``step/train_clims.py``, ``clip_loss.py``) and POLE (``clip_adapter_utils.py``):

* Masked pixels: CLIMS multiplies the *ImageNet-normalised* image by P, so a
  masked pixel becomes the mean colour, not black. Our images are in [0, 1] and the
  bundle normalises inside, so ``mask_fill="mean"`` (default) composes
  ``m + P ⊙ (X − m)`` with m the ImageNet mean (≈ CLIP's mean): the CLIP encoder
  sees what CLIMS feeds it. ``mask_fill="zero"`` is the literal ``P ⊙ X``.
* Resizing: CLIMS resizes the sigmoid map and the image to the CLIP input size
  (bilinear, ``align_corners=True``) and masks there. We do the same when
  ``clip_input_size`` is given (else at the image size, leaving the resize to the
  bundle). ``probs`` may be given at any resolution: only the present pairs are
  gathered and upsampled, which is how :func:`train_cam` saves work.
* Averaging: OTM and BTM are means over the present pairs. CLIMS's CBS is a *sum*
  over pairs and background words (``cbs_reduction="sum"``, default, so the paper's
  weight 1 means what it meant there); ``"mean"`` divides by the number of pairs.
  The cosines inside CBS are clamped to ``clamp[1]`` only so log(1 − cos) stays finite.
* REG: CLIMS takes ``torch.mean`` of the whole sigmoid map, all C classes of every
  image (absent classes are pushed down too); so do we.
* Adapters (POLE): the image adapter (if given) is applied to the fg and bg features
  for OTM/BTM; text features arrive already adapted. CBS uses the raw CLIP features
  of fg and of the background words, as in POLE's code (no adapter there), so the
  adapters cannot weaken the background suppression.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .network import IMAGENET_MEAN

LOSS_KEYS = ("otm", "btm", "cbs", "reg")
DEFAULT_WEIGHTS = {"otm": 10.0, "btm": 24.0, "cbs": 1.0, "reg": 0.2}  # CLIMS; POLE: 10, 25, 1, 0

TextFeats = (
    torch.Tensor
    | Mapping[tuple[int, int], torch.Tensor]
    | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
)


def present_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, k) indices of the present classes, row-major (image b, then class k)."""
    idx = torch.nonzero(labels > 0.5, as_tuple=False)
    return idx[:, 0], idx[:, 1]


def _pair_text_feats(
    text_feats: TextFeats, b_idx: torch.Tensor, k_idx: torch.Tensor
) -> torch.Tensor:
    """Text feature per present pair, from any of the accepted forms; P×D."""
    n = b_idx.numel()
    if isinstance(text_feats, torch.Tensor):
        if text_feats.dim() == 3:  # B×C×D
            return text_feats[b_idx, k_idx]
        if text_feats.dim() == 2:  # P×D, one row per present pair in row-major order
            if text_feats.shape[0] != n:
                raise ValueError(
                    f"text_feats: {text_feats.shape[0]} rows for {n} present (image, class) pairs"
                )
            return text_feats
        raise ValueError(f"text_feats: expected B×C×D or P×D, got shape {tuple(text_feats.shape)}")
    if isinstance(text_feats, Mapping):
        keys = list(zip(b_idx.tolist(), k_idx.tolist(), strict=True))
        missing = [k for k in keys if k not in text_feats]
        if missing:
            raise KeyError(f"text_feats: no text feature for (image, class) {missing[0]}")
        return torch.stack([text_feats[k] for k in keys])
    if callable(text_feats):
        return text_feats(b_idx, k_idx)
    raise TypeError(f"text_feats: unsupported type {type(text_feats).__name__}")


def masked_pairs(
    probs: torch.Tensor,
    images: torch.Tensor,
    b_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    size: int | tuple[int, int] | None = None,
    mask_fill: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background images (P×3×S×S) of the given pairs.

    ``probs`` (B×C×h×w, any h×w) is gathered per pair and resized to ``size`` (or the
    image size); the images are resized once per batch, then gathered.
    """
    if size is None:
        size = tuple(images.shape[-2:])
    elif isinstance(size, int):
        size = (size, size)
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
    p = probs[b_idx, k_idx].unsqueeze(1)
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=True)
    x = images[b_idx].to(p.dtype)
    if mask_fill == "mean":
        m = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        d = x - m
        return m + p * d, m + (1 - p) * d
    if mask_fill == "zero":
        return p * x, (1 - p) * x
    raise ValueError(f"mask_fill: expected 'mean' or 'zero', got {mask_fill!r}")


def clims_losses(
    probs: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    bundle: Any,
    text_feats: TextFeats,
    bg_text_feats: torch.Tensor | None,
    *,
    weights: Mapping[str, float] | None = None,
    clamp: tuple[float, float] = (1e-4, 0.9999),
    cbs_thresh: float = 0.26,
    image_adapter: torch.nn.Module | None = None,
    clip_input_size: int | None = None,
    mask_fill: str = "mean",
    cbs_reduction: str = "sum",
) -> dict[str, torch.Tensor]:
    """The four CLIMS terms and their weighted sum, over all present (image, class) pairs.

    Args:
        probs: B×C×H×W sigmoid CAMs (any resolution; upsampled per pair).
        images: B×3×H×W in [0, 1].
        labels: B×C multi-hot.
        bundle: frozen CLIP with ``encode_image([0,1] images) -> unit B×D``.
        text_feats: the text feature of each present pair: a B×C×D tensor, a P×D tensor
            (pairs in row-major order, as :func:`present_pairs`), a dict
            ``{(b, k): D}``, or a callable ``(b_idx, k_idx) -> P×D``.
        bg_text_feats: M×D features of the background words (None/empty: CBS = 0).
        weights: {otm, btm, cbs, reg}; missing keys count 0. Default: CLIMS (10, 24, 1, 0.2).
        clamp: cosine clamp of OTM/BTM.
        cbs_thresh: τ, only background words closer than this are suppressed.
        image_adapter: optional POLE adapter for the fg/bg image features.
        clip_input_size: mask at this size (the CLIP input), as CLIMS does.
        mask_fill: "mean" (CLIMS: masked pixels = mean colour) or "zero".
        cbs_reduction: "sum" over pairs (CLIMS) or "mean".

    Returns: dict with scalar tensors ``otm, btm, cbs, reg, total`` and ``n_pairs``.

    One CLIP image call encodes all fg and bg images of the batch together.
    """
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(w) - set(LOSS_KEYS)
    if unknown:
        raise ValueError(f"weights: unknown loss terms {sorted(unknown)}; expected {LOSS_KEYS}")
    if cbs_reduction not in ("sum", "mean"):
        raise ValueError(f"cbs_reduction: expected 'sum' or 'mean', got {cbs_reduction!r}")
    lo, hi = float(clamp[0]), float(clamp[1])
    reg = probs.float().mean()
    b_idx, k_idx = present_pairs(labels)
    n = b_idx.numel()
    if n == 0:
        zero = probs.sum() * 0.0
        otm = btm = cbs = zero.float()
    else:
        fg, bg = masked_pairs(
            probs, images, b_idx, k_idx, size=clip_input_size, mask_fill=mask_fill
        )
        feats = bundle.encode_image(torch.cat([fg, bg])).float()
        f_fg_raw, f_bg_raw = feats[:n], feats[n:]
        if image_adapter is not None:
            f_fg, f_bg = image_adapter(f_fg_raw).float(), image_adapter(f_bg_raw).float()
        else:
            f_fg, f_bg = f_fg_raw, f_bg_raw
        t = F.normalize(_pair_text_feats(text_feats, b_idx, k_idx).float(), dim=-1)
        s_fg = (F.normalize(f_fg, dim=-1) * t).sum(-1).clamp(lo, hi)
        s_bg = (F.normalize(f_bg, dim=-1) * t).sum(-1).clamp(lo, hi)
        otm = -torch.log(s_fg).mean()
        btm = -torch.log(1 - s_bg).mean()
        if bg_text_feats is None or bg_text_feats.numel() == 0:
            cbs = f_fg_raw.sum() * 0.0
        else:
            b = F.normalize(bg_text_feats.float().to(feats.device), dim=-1)
            cos = F.normalize(f_fg_raw, dim=-1) @ b.t()  # P×M
            mask = (cos > cbs_thresh).to(cos.dtype)
            cbs = -(torch.log(1 - cos.clamp(max=hi)) * mask).sum()
            if cbs_reduction == "mean":
                cbs = cbs / n
    out = {"otm": otm, "btm": btm, "cbs": cbs, "reg": reg}
    out["total"] = sum(float(w.get(k, 0.0)) * out[k] for k in LOSS_KEYS)
    out["n_pairs"] = torch.tensor(n)
    return out
