"""CLIP-ES CAMs of a dataset into the CAM store: the ``clip_es`` CAM source (rule clip_es_cams).

:mod:`pole_core.cam.clip_es` makes the maps of one image; this module decides the texts
(CLIP-ES's VOC or COCO prompt lists, else the dataset's own words), runs every image of a
shard, and writes the same store as :func:`pole_core.cam.extract.extract_cams` (float16
``cam`` k×H×W, ``cam_s4`` k×ceil(H/4)×ceil(W/4), ``keys`` = the image-level label), so the
refinement stages cannot tell the sources apart.

POLE on CLIP-ES (a variant ``{source: clip_es, prompts: selected}``): ``image_tokens``
gives each image's chosen token per labelled class; a class whose token is its dataset
prompt keeps CLIP-ES's prompt, any other token replaces it in the template. Text rows are
cached per distinct prompt, so a split with few distinct choices encodes few texts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..io.cam_store import CamWriter
from . import clip_es as ce
from .extract import image_keys

Tokenizer = Callable[[list[str]], torch.Tensor]
# image id -> {class index: the prompt text of that class for this image}
ImagePrompts = Callable[[str], Mapping[int, str]]
_LOG = logging.getLogger(__name__)


class ClipEsText(NamedTuple):
    """The prompt words of a run: one per class (class order), the background words."""

    class_prompts: list[str]
    bg_prompts: list[str]
    origin: str  # "voc", "coco" (CLIP-ES's lists) or "dataset" (the dataset's own words)


def default_text(
    class_names: Sequence[str], dataset_prompts: Sequence[str], dataset_bg_words: Sequence[str]
) -> ClipEsText:
    """CLIP-ES's lists for VOC's 20 or COCO's 80 classes (in their order), else the dataset's.

    CLIP-ES hand-edited its class names ("bird avian", "chair seat") and picked background
    words for those two label sets; on any other class list they would be wrong words.
    """
    from ..data.coco import COCO_CLASSES
    from ..data.voc import VOC_CLASSES

    names = tuple(class_names)
    if names == VOC_CLASSES:
        return ClipEsText(list(ce.VOC_CLASS_NAMES), list(ce.VOC_BG_PROMPTS), "voc")
    if names == COCO_CLASSES:
        return ClipEsText(list(ce.COCO_CLASS_NAMES), list(ce.COCO_BG_PROMPTS), "coco")
    return ClipEsText(list(dataset_prompts), list(dataset_bg_words), "dataset")


def resolve_text(
    class_names: Sequence[str],
    dataset_prompts: Sequence[str],
    dataset_bg_words: Sequence[str],
    *,
    class_prompts: Mapping[str, str] | None,
    bg_prompts: Sequence[str] | None,
) -> ClipEsText:
    """The config's ``clip_es.class_prompts`` / ``bg_prompts`` over :func:`default_text`.

    ``class_prompts`` maps class names to prompt words (unlisted classes keep the
    default); ``bg_prompts`` replaces the background words. The background list must not be
    empty: with one labelled class and no background the softmax is constant and the
    Grad-CAM is zero.
    """
    text = default_text(class_names, dataset_prompts, dataset_bg_words)
    prompts = list(text.class_prompts)
    origin = text.origin
    if class_prompts:
        unknown = sorted(set(class_prompts) - set(class_names))
        if unknown:
            raise ValueError(
                f"config: clip_es.class_prompts names unknown class {unknown[0]!r} "
                f"(classes: {', '.join(class_names)})"
            )
        prompts = [class_prompts.get(n, p) for n, p in zip(class_names, prompts, strict=True)]
        origin += "+config"
    bg = list(text.bg_prompts) if bg_prompts is None else list(bg_prompts)
    if not bg:
        raise ValueError(
            "config: clip_es.bg_prompts is empty (or null and the dataset names no background "
            "words): CLIP-ES needs background prompts to compete with the classes"
        )
    return ClipEsText(prompts, bg, origin)


def vit_depth(model: nn.Module) -> int:
    """Number of blocks of the model's ViT (0 when it has none: the caller's error then)."""
    blocks = getattr(getattr(getattr(model, "visual", None), "transformer", None), "resblocks", [])
    return len(blocks)


def clamp_attn_layers(requested: int, depth: int, log: Callable[[str], None] | None = None) -> int:
    """``attn_layers`` limited to the ViT's depth, with a logged note when it had to be.

    CLIP-ES's 8 is "the last 8 of ViT-B/16's 12"; a shallower CLIP (the demo's 4-block
    mini-CLIP) averages all its blocks instead of failing.
    """
    used = max(1, min(int(requested), int(depth))) if depth else int(requested)
    if used != int(requested):
        (log or _LOG.info)(
            f"clip_es.attn_layers {requested} > the ViT's {depth} blocks: averaging the "
            f"attention of all {used}"
        )
    return used


def selected_prompts(
    selected: Mapping[str, Mapping[str, str]],
    class_names: Sequence[str],
    dataset_prompts: Sequence[str],
    class_prompts: Sequence[str],
) -> ImagePrompts:
    """Per-image prompt words from a POLE selection file (``{id: {class name: token}}``).

    A token equal to the class's dataset prompt (POLE kept the name) keeps CLIP-ES's
    prompt for that class; another token (a synonym) replaces it. An image missing from
    the selection is an error naming it, as in train_cam.
    """
    index = {name: k for k, name in enumerate(class_names)}

    def prompts(image_id: str) -> dict[int, str]:
        if image_id not in selected:
            raise ValueError(f"no prompt selection for image {image_id!r}")
        out = {}
        for name, token in selected[image_id].items():
            k = index[name]
            out[k] = class_prompts[k] if token == dataset_prompts[k] else token
        return out

    return prompts


class _TextRows:
    """Text features of the labelled classes and the background, cached per distinct prompt."""

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, template: str, bg_prompts: Sequence[str]
    ):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.rows: dict[str, torch.Tensor] = {}
        self.bg = ce.text_features(model, tokenizer, [], list(bg_prompts), template)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        new = list(dict.fromkeys(p for p in prompts if p not in self.rows))
        if new:
            feats = ce.text_features(self.model, self.tokenizer, new, [], self.template)
            self.rows.update(zip(new, feats, strict=True))
        return torch.cat([torch.stack([self.rows[p] for p in prompts]), self.bg])


def extract_clip_es_cams(
    model: nn.Module,
    tokenizer: Tokenizer,
    dataset: Any,
    ids: Sequence[str],
    out_h5: str | os.PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    text: ClipEsText,
    template: str = ce.CLIP_ES_TEMPLATE,
    image_prompts: ImagePrompts | None = None,
    scales: Sequence[float] = ce.CLIP_ES_SCALES,
    flip: bool = False,
    use_caa: bool = True,
    box_threshold: float = ce.BOX_THRESHOLD_VOC,
    attn_layers: int = ce.ATTN_LAYERS,
    sinkhorn_iters: int = ce.SINKHORN_ITERS,
    affinity_power: int = ce.AFFINITY_POWER,
    pooling: ce.Pooling = "model",
    attrs: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """CLIP-ES CAMs of ``ids`` into ``out_h5`` (atomic, the CAM store); returns timing stats.

    Per image: the image at its own size, normalised with the CLIP's ``mean``/``std``
    (positions interpolated to its patch grid); the text rows of its labelled classes
    (``image_prompts`` or ``text.class_prompts``) and ``text.bg_prompts``; CLIP-ES maps of
    the labelled classes at full size and on the stride-4 grid from one pass. ``model``
    must already be on its device; ``attn_layers`` is clamped to the ViT's depth (logged).
    """
    names = list(dataset.class_names)
    if len(text.class_prompts) != len(names):
        raise ValueError(
            f"clip_es: {len(text.class_prompts)} class prompts for {len(names)} classes"
        )
    param = next(model.parameters())
    dev = param.device
    layers = clamp_attn_layers(attn_layers, vit_depth(model), log)
    mean_t = torch.tensor([float(m) for m in mean], device=dev).view(3, 1, 1)
    std_t = torch.tensor([float(s) for s in std], device=dev).view(3, 1, 1)
    rows = _TextRows(model, tokenizer, template, text.bg_prompts)
    all_attrs = {
        "classes": names,
        "scales": [float(s) for s in scales],
        "flip": bool(flip),
        "method": "clip_es",
        "template": template,
        "class_prompts": list(text.class_prompts),
        "bg_prompts": list(text.bg_prompts),
        "attn_layers": layers,
        **(attrs or {}),
    }
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with (
        CamWriter(out_h5, all_attrs) as writer,
        tqdm(total=len(ids), disable=not progress, desc="clip_es", unit="img") as bar,
    ):
        for image_id in ids:
            image = np.asarray(dataset.image(image_id))
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"image {image_id!r}: expected uint8 H×W×3, got {image.dtype} {image.shape}"
                )
            keys = image_keys(dataset.labels(image_id))
            chosen = image_prompts(image_id) if image_prompts is not None else {}
            prompts = [chosen.get(k, p) for k, p in enumerate(text.class_prompts)]
            x = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1)
            x = (x.float().div_(255.0) - mean_t) / std_t
            cam, cam_s4 = ce.clip_es_cams_s4(
                model,
                x,
                keys,
                rows(prompts),
                num_classes=len(names),
                scales=tuple(scales),
                flip=flip,
                use_caa=use_caa,
                box_threshold=box_threshold,
                attn_layers=layers,
                sinkhorn_iters=sinkhorn_iters,
                affinity_power=affinity_power,
                pooling=pooling,
            )
            writer.add(image_id, cam, keys, cam_s4)
            bar.update()
    seconds = time.perf_counter() - t0
    n = len(ids)
    return {
        "n_images": n,
        "seconds": round(seconds, 4),
        "s_per_image": round(seconds / n, 4) if n else None,
        "device": str(dev),
        "distinct_prompts": len(rows.rows),
        "attn_layers": layers,
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        if dev.type == "cuda"
        else None,
    }
