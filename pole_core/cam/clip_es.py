"""Training-free CAMs from a frozen CLIP ViT, after CLIP-ES ("CLIP is Also an Efficient
Segmenter: A Text-Driven Approach for Weakly Supervised Semantic Segmentation", Lin et al.,
CVPR 2023).

The method, per image and per labelled class c:

1. **Text.** Every class name and every background word is put in the prompt template
   ("a clean origami {}."); per name the template embeddings are normalised, averaged
   and normalised again (:func:`text_features`).
2. **Softmax Grad-CAM.** The image embedding is scored against the labelled classes and
   the background prompts together, ``softmax(scale * img @ text.T)``; the target is the
   probability of c. Because the classes and background words share one softmax, a region
   that matches another labelled class (or the background) lowers c's probability and is
   suppressed in c's map, where a raw-logit Grad-CAM would light it up whenever the texts
   are similar. Grad-CAM is taken on the patch tokens entering the last block's attention
   (the output of its first LayerNorm): channel weights are the gradients averaged over
   the tokens, the map is ReLU of the weighted sum, min-max normalised per class.
3. **Class-aware attention affinity (CAA).** The head-averaged patch-to-patch attention
   of the last ``attn_layers`` blocks is averaged, made (nearly) doubly stochastic by
   alternating column/row normalisation, symmetrised and squared. Per class, the CAM is
   thresholded (``> box_threshold * max``), each connected region is replaced by its
   bounding box, and only CAM values inside those boxes are propagated through the
   affinity: ``refined = A @ (box * cam)``. Low CAM values outside the boxes (noise, the
   background) thus never spread.

Maps of every scale (and flip) are upsampled bilinearly to the requested sizes, summed
and divided by their max + 1e-5, like :mod:`pole_core.cam.extract`, so the results fit the
CAM store's ``cam`` / ``cam_s4`` contract. Works on open_clip ViTs (``open_clip.CLIP``
whose ``visual`` is a ``VisionTransformer`` with ``nn.MultiheadAttention`` blocks) of
either pooling: class token (``"tok"``, OpenAI ViTs) or patch mean (``"avg"``, the
mini-CLIP). The image embedding is the model's own, so the logits are the model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..device import autocast
from .extract import EPS, strided_size

Tokenizer = Callable[[list[str]], torch.Tensor]

# --------------------------------------------------------------------------- defaults

#: The prompt template of CLIP-ES (one template, for class names and background words).
CLIP_ES_TEMPLATE = "a clean origami {}."

#: PASCAL VOC class names as CLIP-ES prompts them (hand-edited to help CLIP: "bird avian",
#: "person with clothes,people,human", ...), in the VOC class order.
VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird avian",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair seat",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person with clothes,people,human",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor screen",
)

#: CLIP-ES's background words for VOC: things that co-occur with the classes and that the
#: softmax should claim instead of a class.
VOC_BG_PROMPTS: tuple[str, ...] = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)

#: MS COCO 2014 class names as CLIP-ES prompts them, in COCO's 80-class order (verbatim,
#: including its "sknowboard").
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person with clothes,people,human",
    "bicycle",
    "car",
    "motorbike",
    "aeroplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird avian",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack,bag",
    "umbrella,parasol",
    "handbag,purse",
    "necktie",
    "suitcase",
    "frisbee",
    "skis",
    "sknowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "dessertspoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair seat",
    "sofa",
    "pottedplant",
    "bed",
    "diningtable",
    "toilet",
    "tvmonitor screen",
    "laptop",
    "mouse",
    "remote control",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hairdrier,blowdrier",
    "toothbrush",
)

#: CLIP-ES's background words for COCO: the VOC list without "keyboard" and "sign" (COCO
#: classes there).
COCO_BG_PROMPTS: tuple[str, ...] = tuple(w for w in VOC_BG_PROMPTS if w not in {"keyboard", "sign"})

#: Box threshold of the CAA step (fraction of the CAM's max): CLIP-ES uses 0.4 on VOC and
#: 0.7 on COCO.
BOX_THRESHOLD_VOC = 0.4
BOX_THRESHOLD_COCO = 0.7

#: CLIP-ES averages the attention of the last 8 of ViT-B/16's 12 blocks.
ATTN_LAYERS = 8
#: Column/row normalisation rounds and the power of the symmetrised affinity.
SINKHORN_ITERS = 3
AFFINITY_POWER = 2
#: CLIP-ES runs one scale, without flip.
CLIP_ES_SCALES: tuple[float, ...] = (1.0,)

_MINMAX_EPS = 1e-7  # the min-max normalisation's epsilon in CLIP-ES's Grad-CAM

Compete = Literal["labels", "all"]
Pooling = Literal["model", "patch_mean"]


# --------------------------------------------------------------------------- text


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore the caller's mode (no global or model state is kept)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def text_features(
    model: nn.Module,
    tokenizer: Tokenizer,
    class_prompts: Sequence[str] = VOC_CLASS_NAMES,
    bg_prompts: Sequence[str] = VOC_BG_PROMPTS,
    template: str | Sequence[str] = CLIP_ES_TEMPLATE,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text embeddings ``(n_fg + n_bg, D)`` float32: the classes, then the bg words.

    With several templates each one's embedding is normalised before averaging (the
    zero-shot classifier recipe), so no template dominates by its norm.
    """
    templates = [template] if isinstance(template, str) else list(template)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"text_features: every template needs a '{{}}' slot, got {templates!r}")
    names = [*class_prompts, *bg_prompts]
    dev = _device_of(model)
    if not names:
        return torch.empty(0, int(model.text_projection.shape[-1]), device=dev)
    texts = [t.format(name) for name in names for t in templates]
    feats = []
    with _eval_mode(model):
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[i : i + batch_size]).to(dev)
            with autocast(dev):
                feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_name = torch.cat(feats).view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(per_name, dim=-1)


# --------------------------------------------------------------------------- ViT pieces


def _vision_tower(model: nn.Module) -> open_clip.transformer.VisionTransformer:
    """The model's ViT, checked to be a variant this module can open up."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise NotImplementedError(
            f"CLIP-ES CAMs need an open_clip VisionTransformer, got {type(visual).__name__}"
        )
    if visual.attn_pool is not None:
        raise NotImplementedError("CLIP-ES CAMs: ViTs with an attentional pooler are not supported")
    for blk in visual.transformer.resblocks:
        if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention) or not hasattr(
            blk, "ln_1"
        ):
            raise NotImplementedError(
                "CLIP-ES CAMs: every ViT block must have ln_1 and an nn.MultiheadAttention attn"
            )
    return visual


def interpolate_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Positional embedding ``(1 + h*w, D)`` for another patch grid (bilinear on the grid part).

    The class token's entry is kept; an unchanged grid returns ``pos`` itself, so inputs of
    the trained size see exactly the model's embedding.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if pos.shape[0] != 1 + old_grid[0] * old_grid[1]:
        raise ValueError(
            f"positional embedding has {pos.shape[0]} rows, expected 1 + {old_grid[0]}x{old_grid[1]}"
        )
    if new_grid == old_grid:
        return pos
    dim = pos.shape[-1]
    grid = pos[1:].float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, dim).to(pos.dtype)
    return torch.cat([pos[:1], grid], dim=0)


def _embed(
    visual: open_clip.transformer.VisionTransformer, x: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch tokens + class token + (interpolated) positions + ln_pre: ``(B, 1 + h*w, D)``."""
    ph, pw = visual.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    tokens = visual.conv1(x.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(tokens.dtype).view(1, 1, -1).expand(tokens.shape[0], 1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    pos = interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid)
    return visual.ln_pre(tokens + pos.to(tokens.dtype)), grid


def _run_block(
    visual: open_clip.transformer.VisionTransformer, blk: nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """One block on batch-first tokens, whatever layout the transformer runs in."""
    if visual.transformer.batch_first:
        return blk(x)
    return blk(x.transpose(0, 1)).transpose(0, 1)


def _attention_weights(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """Head-averaged ``softmax(Q K^T / sqrt(d))`` of normalised tokens ``h (B, N, D)``: ``(B, N, N)``.

    Only queries and keys are projected; the block's own forward never returns weights.
    """
    d = attn.embed_dim
    if attn._qkv_same_embed_dim:
        wq, wk = attn.in_proj_weight[:d], attn.in_proj_weight[d : 2 * d]
    else:
        wq, wk = attn.q_proj_weight, attn.k_proj_weight
    bq = bk = None
    if attn.in_proj_bias is not None:
        bq, bk = attn.in_proj_bias[:d], attn.in_proj_bias[d : 2 * d]
    b, n, _ = h.shape
    heads = attn.num_heads
    hd = d // heads
    q = F.linear(h, wq, bq).float().view(b, n, heads, hd).transpose(1, 2)
    k = F.linear(h, wk, bk).float().view(b, n, heads, hd).transpose(1, 2)
    return torch.softmax((q @ k.transpose(-1, -2)) * hd**-0.5, dim=-1).mean(dim=1)


def _pool(
    visual: open_clip.transformer.VisionTransformer, x: torch.Tensor, pooling: Pooling
) -> torch.Tensor:
    """Final image embedding from the last block's tokens, as the model itself pools them.

    ``pooling="patch_mean"`` instead takes the mean of the ``ln_post``-ed patch tokens, the
    embedding CLIP-ES scores on (for every ViT, also class-token ones).
    """
    if pooling == "model":
        pool_type, ln_after = visual.pool_type, visual.final_ln_after_pool
    elif pooling == "patch_mean":
        pool_type, ln_after = "avg", False
    else:
        raise ValueError(f"pooling must be 'model' or 'patch_mean', got {pooling!r}")

    def take(t: torch.Tensor) -> torch.Tensor:
        if pool_type == "avg":
            return t[:, 1:].mean(dim=1)
        if pool_type == "tok":
            return t[:, 0]
        raise NotImplementedError(
            f"CLIP-ES CAMs: ViT pool_type {pool_type!r} has no image embedding"
        )

    pooled = visual.ln_post(take(x)) if ln_after else take(visual.ln_post(x))
    return pooled @ visual.proj if visual.proj is not None else pooled


def image_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Un-normalised image embeddings ``(B, E)`` by this module's ViT path (any patch multiple).

    At the trained input size it equals ``model.encode_image``; elsewhere the positional
    embedding is interpolated. Exposed so the path can be checked against the model.
    """
    visual = _vision_tower(model)
    tokens, _ = _embed(visual, images)
    for blk in visual.transformer.resblocks:
        tokens = _run_block(visual, blk, tokens)
    return _pool(visual, tokens, "model")


# --------------------------------------------------------------------------- Grad-CAM


class GridCams(NamedTuple):
    """Per-image results on the patch grid."""

    cam: torch.Tensor  # (B, k, h, w) float32 in [0, 1], the labelled classes in label order
    attn: (
        torch.Tensor
    )  # (B, h*w, h*w) float32, patch-to-patch attention averaged over heads and layers


def _check_labels(label_indices: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    labels = [int(i) for i in np.asarray(label_indices, dtype=np.int64).reshape(-1)]
    bad = [i for i in labels if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"label indices {bad} outside 0..{num_classes - 1}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label indices repeat: {labels}")
    return labels


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-row ``(x - min) / (max - min + eps)`` over the last axis (CLIP-ES's CAM scaling)."""
    x = x - x.amin(dim=-1, keepdim=True)
    return x / (x.amax(dim=-1, keepdim=True) + _MINMAX_EPS)


def _prompt_bank(
    text: torch.Tensor, labels: list[int], num_classes: int, compete: Compete
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text rows scored by the softmax, and the row of each labelled class among them."""
    if text.ndim != 2 or text.shape[0] < num_classes:
        raise ValueError(
            f"text features must be (num_classes + n_bg, D) with num_classes={num_classes}, "
            f"got {tuple(text.shape)}"
        )
    if compete == "labels":  # CLIP-ES: the image's classes against the background words
        bank = torch.cat([text[labels], text[num_classes:]], dim=0)
        rows = torch.arange(len(labels))
    elif compete == "all":
        bank, rows = text, torch.tensor(labels, dtype=torch.long)
    else:
        raise ValueError(f"compete must be 'labels' or 'all', got {compete!r}")
    return F.normalize(bank.float(), dim=-1), rows


def gradcam_grid(
    model: nn.Module,
    images: torch.Tensor,
    label_indices: Sequence[int] | np.ndarray,
    text: torch.Tensor,
    *,
    num_classes: int,
    attn_layers: int = ATTN_LAYERS,
    use_softmax: bool = True,
    compete: Compete = "labels",
    pooling: Pooling = "model",
    logit_scale: float | None = None,
    amp: bool = True,
) -> GridCams:
    """Softmax Grad-CAM of the labelled classes, and the attention for CAA, on the patch grid.

    ``images`` ``(B, 3, H, W)`` are CLIP-normalised with H, W multiples of the patch size;
    every image gets the same labels (an image and its flip). ``text`` holds
    ``num_classes`` class rows then the background rows (:func:`text_features`).
    ``compete="labels"`` (CLIP-ES) lets only the labelled classes and the background words
    share the softmax, ``"all"`` every class. ``use_softmax=False`` targets the raw logit
    (plain Grad-CAM, for comparison). One backward pass serves all classes: the last
    block runs on one copy of the tokens per class.
    """
    visual = _vision_tower(model)
    labels = _check_labels(label_indices, num_classes)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    ph, pw = visual.patch_size
    if images.shape[-2] % ph or images.shape[-1] % pw:
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} is not a multiple of the patch {ph}x{pw}"
        )
    dev = _device_of(model)
    blocks = visual.transformer.resblocks
    n_attn = max(1, min(int(attn_layers), len(blocks)))
    first_attn = len(blocks) - n_attn
    b, k = images.shape[0], len(labels)

    # Autograd must run even when the caller is in no_grad or inference mode; clones turn
    # inference tensors into normal ones.
    with torch.inference_mode(False), _eval_mode(model):
        x = images.to(dev).clone()
        bank, rows = _prompt_bank(text.to(dev).clone(), labels, num_classes, compete)
        scale = (
            float(model.logit_scale.detach().exp()) if logit_scale is None else float(logit_scale)
        )

        with torch.no_grad(), autocast(dev, enabled=amp):
            tokens, grid = _embed(visual, x)
            attn = torch.zeros(b, grid[0] * grid[1], grid[0] * grid[1], device=dev)
            for i, blk in enumerate(blocks):
                if i >= first_attn:
                    attn += _attention_weights(blk.attn, blk.ln_1(tokens))[:, 1:, 1:]
                if i < len(blocks) - 1:
                    tokens = _run_block(visual, blk, tokens)
            attn /= n_attn
        if k == 0:
            return GridCams(torch.zeros(b, 0, *grid, device=dev), attn)

        last = blocks[-1]
        feats = tokens.detach().repeat_interleave(k, dim=0).requires_grad_(True)  # (B*k, N, D)
        captured: list[torch.Tensor] = []
        handle = last.ln_1.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad(), autocast(dev, enabled=amp):
                emb = F.normalize(
                    _pool(visual, _run_block(visual, last, feats), pooling).float(), dim=-1
                )
                logits = scale * emb @ bank.t()
                score = logits.softmax(dim=-1) if use_softmax else logits
                target = score.gather(1, rows.to(dev).repeat(b)[:, None]).sum()
            (act,) = captured
            (grad,) = torch.autograd.grad(target, act)
        finally:
            handle.remove()
        if not visual.transformer.batch_first:
            act, grad = act.transpose(0, 1), grad.transpose(0, 1)
        act, grad = act[:, 1:].detach().float(), grad[:, 1:].float()
        weights = grad.mean(dim=1, keepdim=True)  # Grad-CAM: gradients averaged over tokens
        cam = _minmax(F.relu((act * weights).sum(dim=-1)))
        return GridCams(cam.view(b, k, *grid), attn)


# --------------------------------------------------------------------------- CAA


def sinkhorn_affinity(
    attn: torch.Tensor, *, iters: int = SINKHORN_ITERS, power: int = AFFINITY_POWER
) -> torch.Tensor:
    """Symmetric affinity from attention ``(..., n, n)``.

    Alternating column and row normalisation (``iters`` rounds) balances tokens that
    attract much attention against those that give it; averaging with the transpose
    makes it symmetric and the matrix power lets affinity reach second neighbours.
    """
    t = attn.float()
    for _ in range(iters):
        t = t / t.sum(dim=-2, keepdim=True).clamp_min(1e-30)
        t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    t = 0.5 * (t + t.transpose(-1, -2))
    return torch.linalg.matrix_power(t, power)


def box_mask(cam: torch.Tensor, threshold: float = BOX_THRESHOLD_VOC) -> torch.Tensor:
    """Boolean ``(k, h, w)``: union of the bounding boxes of each map's regions above
    ``threshold * max`` (8-connected). An all-zero map has no box.
    """
    maps = cam.detach().float().cpu().numpy()
    out = np.zeros(maps.shape, dtype=bool)
    eight = np.ones((3, 3), dtype=bool)
    for i, m in enumerate(maps):
        peak = float(m.max(initial=0.0))
        if not peak > 0:
            continue
        regions, _ = ndimage.label(m > threshold * peak, structure=eight)
        for box in ndimage.find_objects(regions):
            out[i][box] = True
    return torch.from_numpy(out).to(cam.device)


def caa_refine(
    cam: torch.Tensor,
    affinity: torch.Tensor,
    *,
    box_threshold: float = BOX_THRESHOLD_VOC,
    mask_output: bool = False,
) -> torch.Tensor:
    """Refine grid CAMs ``(k, h, w)`` with an affinity ``(h*w, h*w)``: ``A @ (box * cam)``.

    Only CAM values inside each class's boxes are propagated (CLIP-ES); with
    ``mask_output=True`` the result is also zeroed outside the boxes. Min-max normalised
    per class.
    """
    k, h, w = cam.shape
    if affinity.shape != (h * w, h * w):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not fit a {h}x{w} grid")
    mask = box_mask(cam, box_threshold).flatten(1).float()
    refined = (cam.flatten(1).float() * mask) @ affinity.float().t()
    if mask_output:
        refined = refined * mask
    return _minmax(refined).view(k, h, w)


# --------------------------------------------------------------------------- multi-scale


def _scaled_input(image: torch.Tensor, scale: float, patch: tuple[int, int]) -> torch.Tensor:
    """``(1, 3, h, w)`` at ``scale``, each side rounded up to a patch multiple (bicubic)."""
    h, w = image.shape[-2:]
    size = (
        max(1, math.ceil(scale * h / patch[0])) * patch[0],
        max(1, math.ceil(scale * w / patch[1])) * patch[1],
    )
    x = image[None].float()
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def clip_es_maps(
    model: nn.Module,
    image: torch.Tensor,
    label_indices: Sequence[int] | np.ndarray,
    text: torch.Tensor,
    *,
    num_classes: int,
    sizes: Sequence[tuple[int, int]] | None = None,
    scales: Sequence[float] = CLIP_ES_SCALES,
    flip: bool = False,
    use_caa: bool = True,
    box_threshold: float = BOX_THRESHOLD_VOC,
    attn_layers: int = ATTN_LAYERS,
    sinkhorn_iters: int = SINKHORN_ITERS,
    affinity_power: int = AFFINITY_POWER,
    mask_output: bool = False,
    use_softmax: bool = True,
    compete: Compete = "labels",
    pooling: Pooling = "model",
    logit_scale: float | None = None,
    amp: bool = True,
) -> list[torch.Tensor]:
    """CLIP-ES maps of one image at each of ``sizes`` (default: the image size).

    ``image`` is ``(3, H, W)``, CLIP-normalised. Per scale s the image is resized to
    ``ceil(s*H/p)*p x ceil(s*W/p)*p`` (p the patch size), Grad-CAM (and CAA when
    ``use_caa``) runs on it and on its flip when ``flip``; the flip's map is flipped
    back and added. Each size gets the sum over scales, upsampled bilinearly, divided by
    its max + 1e-5: float32 ``(k, *size)`` tensors in [0, 1) in label order, on the model's
    device. Defaults are CLIP-ES's for VOC (COCO: ``box_threshold=BOX_THRESHOLD_COCO``).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales must not be empty")
    visual = _vision_tower(model)
    labels = _check_labels(label_indices, num_classes)
    full = (int(image.shape[-2]), int(image.shape[-1]))
    sizes = [full] if sizes is None else [(int(h), int(w)) for h, w in sizes]
    dev = _device_of(model)
    acc = [torch.zeros(len(labels), *size, device=dev) for size in sizes]
    if not labels:
        return acc
    for s in scales:
        x = _scaled_input(image.to(dev), float(s), visual.patch_size)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        grid = gradcam_grid(
            model,
            x,
            labels,
            text,
            num_classes=num_classes,
            attn_layers=attn_layers,
            use_softmax=use_softmax,
            compete=compete,
            pooling=pooling,
            logit_scale=logit_scale,
            amp=amp,
        )
        maps = grid.cam
        if use_caa:
            affinity = sinkhorn_affinity(grid.attn, iters=sinkhorn_iters, power=affinity_power)
            maps = torch.stack(
                [
                    caa_refine(m, a, box_threshold=box_threshold, mask_output=mask_output)
                    for m, a in zip(maps, affinity, strict=True)
                ]
            )
        merged = maps[0] + maps[1].flip(-1) if flip else maps[0]
        for a, size in zip(acc, sizes, strict=True):
            a += F.interpolate(merged[None], size=size, mode="bilinear", align_corners=False)[0]
    return [a / (a.amax(dim=(1, 2), keepdim=True) + EPS) for a in acc]


def clip_es_cams(
    model: nn.Module,
    image: torch.Tensor,
    label_indices: Sequence[int] | np.ndarray,
    text: torch.Tensor,
    *,
    num_classes: int,
    **options: Any,
) -> np.ndarray:
    """Full-resolution CLIP-ES CAMs: float32 ``(k, H, W)`` in [0, 1], rows in label order.

    ``options`` are :func:`clip_es_maps`'s keywords (``scales``, ``flip``, ``use_caa``,
    ``box_threshold``, ...), with CLIP-ES's defaults.
    """
    if "sizes" in options:
        raise TypeError("clip_es_cams: output sizes are fixed; use clip_es_maps for other sizes")
    (cam,) = clip_es_maps(model, image, label_indices, text, num_classes=num_classes, **options)
    return cam.cpu().numpy()


def clip_es_cams_s4(
    model: nn.Module,
    image: torch.Tensor,
    label_indices: Sequence[int] | np.ndarray,
    text: torch.Tensor,
    *,
    num_classes: int,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``(cam (k, H, W), cam_s4 (k, ceil(H/4), ceil(W/4)))`` for the CAM store, from one pass.

    Both are upsampled from the same grid maps, as :mod:`pole_core.cam.extract` makes its
    ``cam`` and ``cam_s4``; ``options`` as in :func:`clip_es_maps`.
    """
    full = (int(image.shape[-2]), int(image.shape[-1]))
    cam, cam_s4 = clip_es_maps(
        model,
        image,
        label_indices,
        text,
        num_classes=num_classes,
        sizes=[full, strided_size(full, 4)],
        **options,
    )
    return cam.cpu().numpy(), cam_s4.cpu().numpy()
