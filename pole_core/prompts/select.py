"""POLE prompt-class selection (Stage B): per image and class, the candidate token CLIP prefers.

For every training image and every class k in its label, the image is multiplied by the
class's CAM from the baseline network (full resolution, from the HDF5 store), encoded by
CLIP and compared with the prompts ``template.format(candidate)`` of the class's
candidates; the softmax over ``logit_scale × cosine`` picks the token. The masked image
reaches CLIP through CLIP's own test-time geometry (``preprocess="clip"``: bicubic resize
of the short side, centre crop, as open_clip's/OpenAI's preprocess) or squashed whole to
the input square (``"squash"``). Pairs are encoded in batches; each is brought to CLIP's input size as it is read,
so memory does not grow with the number of image sizes in the split. The dataset's name is listed first among the candidates, so a tie keeps it.

The masks come from a *mask source* (``image_id -> (masks K×H×W, class indices)``): the
baseline CAM store for POLE (:func:`cam_masks`), or the ground-truth masks
(:func:`gt_masks`) for the oracle variant, the ceiling of the selection: the same code
fed the object's true extent instead of the baseline's estimate of it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..clip.bundle import clip_resize_crop
from ..io.cam_store import open_cams, read_cam

Selected = dict[str, dict[str, str]]
Histogram = dict[str, dict[str, int]]
PREPROCESS = ("clip", "squash")
# image id -> (float masks K×H×W at the image's resolution, the K class indices)
MaskSource = Callable[[str], tuple[np.ndarray, np.ndarray]]


def _candidate_lists(
    class_names: Sequence[str], candidates: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Candidates per class, duplicates dropped (order kept); every class must have one."""
    missing = [name for name in class_names if not candidates.get(name)]
    if missing:
        raise ValueError(f"prompt candidates: no candidate tokens for class(es) {missing}")
    return {name: list(dict.fromkeys(candidates[name])) for name in class_names}


class _Selector:
    """Turns (image, class) pairs into CLIP-sized inputs at once and scores them a batch at a time.

    Each pair is masked and brought to CLIP's input square when it arrives, so what waits for
    a batch is ``batch_size`` CLIP-sized images, whatever the number of image sizes in the split.
    """

    def __init__(
        self,
        bundle: Any,
        text: dict[int, torch.Tensor],
        tokens: dict[int, list[str]],
        batch_size: int,
        preprocess: str = "clip",
    ):
        self.bundle = bundle
        self.text = text
        self.tokens = tokens
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.device = torch.device(getattr(bundle, "device", "cpu"))
        self.scale = float(bundle.logit_scale)
        self.pending: list[tuple[str, int, torch.Tensor]] = []
        self.choices: list[tuple[str, int, str]] = []

    def add(self, image_id: str, k: int, image: np.ndarray, cam: np.ndarray) -> None:
        img = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        mask = torch.from_numpy(np.ascontiguousarray(cam)).to(self.device, torch.float32)
        x = img.permute(2, 0, 1)[None].float().div_(255.0) * mask[None, None]
        size = int(self.bundle.input_size)
        if self.preprocess == "clip":
            x = clip_resize_crop(x, size)
        elif x.shape[-2:] != (size, size):  # the bundle's own squash, one image at a time
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        self.pending.append((image_id, k, x[0]))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        feats = F.normalize(
            self.bundle.encode_image(torch.stack([b[2] for b in batch])).float(), dim=-1
        )
        for (image_id, k, _), feat in zip(batch, feats, strict=True):
            probs = torch.softmax(self.scale * (self.text[k] @ feat), dim=0)
            self.choices.append((image_id, k, self.tokens[k][int(torch.argmax(probs))]))


@contextmanager
def cam_masks(cams_h5: str | os.PathLike) -> Iterator[MaskSource]:
    """The baseline CAMs of an HDF5 store as a mask source (POLE's selection)."""
    with open_cams(cams_h5) as f:

        def source(image_id: str) -> tuple[np.ndarray, np.ndarray]:
            return read_cam(f, image_id)

        yield source


def gt_masks(dataset: Any) -> MaskSource:
    """Binary ground-truth masks of the labelled classes as a mask source (the oracle).

    The classes are the image-level label, as the CAM store keys them, so the oracle scores
    exactly the pairs POLE does; ignore pixels (255) count as not the object.
    """

    def source(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        keys = np.flatnonzero(np.asarray(dataset.labels(image_id)) > 0.5)
        label_map = np.asarray(dataset.mask(image_id))
        masks = label_map[None] == (keys + 1)[:, None, None]
        return masks.astype(np.float32), keys

    return source


def select_prompts(
    dataset: Any,
    ids: Sequence[str],
    cams_h5: str | os.PathLike,
    bundle: Any,
    candidates: Mapping[str, Sequence[str]],
    **options: Any,
) -> tuple[Selected, Histogram]:
    """Choose a token per (image, labelled class) from the baseline CAMs in ``cams_h5``.

    Returns ``(selected, histogram)``: ``selected`` = ``{image_id: {class_name: token}}``
    for every id in ``ids`` (an image without classes maps to ``{}``); ``histogram`` =
    ``{class_name: {token: count}}`` over all candidates, in candidate order. The classes
    of an image are the ``keys`` stored with its CAM (its image-level label).
    ``options`` are :func:`select_prompts_from_masks`'s (``template``, ``batch_size``,
    ``preprocess``, ``progress``).
    """
    with cam_masks(cams_h5) as source:
        return select_prompts_from_masks(
            dataset, ids, source, bundle, candidates, source_name=str(cams_h5), **options
        )


def select_prompts_from_masks(
    dataset: Any,
    ids: Sequence[str],
    masks: MaskSource,
    bundle: Any,
    candidates: Mapping[str, Sequence[str]],
    *,
    template: str = "A photo of {}.",
    batch_size: int = 64,
    preprocess: str = "clip",
    progress: bool = True,
    source_name: str = "masks",
) -> tuple[Selected, Histogram]:
    """:func:`select_prompts` over any mask source (``masks``: CAMs or ground truth).

    ``template`` is the prompt of every candidate token. ``preprocess``: ``"clip"`` (short
    side to ``bundle.input_size``, centre crop) or ``"squash"`` (whole image to the square).
    ``source_name`` names the source in error messages (a CAM file, ``ground truth``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    names = list(dataset.class_names)
    cands = _candidate_lists(names, candidates)
    device = torch.device(getattr(bundle, "device", "cpu"))
    with torch.inference_mode():
        text = {
            k: F.normalize(
                torch.as_tensor(bundle.encode_text([template.format(c) for c in cands[name]]))
                .float()
                .to(device),
                dim=-1,
            )
            for k, name in enumerate(names)
        }
        tokens = {k: cands[name] for k, name in enumerate(names)}
        selector = _Selector(bundle, text, tokens, batch_size, preprocess)
        for image_id in tqdm(ids, disable=not progress, desc="select prompts", unit="img"):
            cam, keys = masks(image_id)
            image = np.asarray(dataset.image(image_id))
            if cam.shape[1:] != image.shape[:2]:
                raise ValueError(
                    f"{source_name}: CAM of {image_id!r} is {cam.shape[1:]}, the image is {image.shape[:2]}"
                )
            for row, k in enumerate(np.asarray(keys).tolist()):
                if not 0 <= k < len(names):
                    raise ValueError(
                        f"{source_name}: key {k} of {image_id!r} outside 0..{len(names) - 1}"
                    )
                selector.add(image_id, k, image, cam[row])
        selector.flush()

    selected: Selected = {image_id: {} for image_id in ids}
    histogram: Histogram = {name: dict.fromkeys(cands[name], 0) for name in names}
    for image_id, k, token in selector.choices:
        selected[image_id][names[k]] = token
        histogram[names[k]][token] += 1
    # key order within an image follows class index, whatever order batches finished in
    selected = {
        i: dict(sorted(c.items(), key=lambda kv: names.index(kv[0]))) for i, c in selected.items()
    }
    return selected, histogram


def selection_stats(selected: Selected, histogram: Histogram) -> dict[str, Any]:
    """Summary for logs and the report: how often each class left its dataset name, and for what.

    The first token of each histogram entry is taken as the dataset's name (candidate order).
    """
    n_pairs = sum(len(c) for c in selected.values())
    tokens = Counter(t for c in selected.values() for t in c.values())
    per_class = {}
    for name, counts in histogram.items():
        total = sum(counts.values())
        first = next(iter(counts), None)
        top = max(counts, key=counts.get) if total else None
        per_class[name] = {
            "n": total,
            "top": top,
            "top_share": round(counts[top] / total, 4) if total else None,
            "name_share": round(counts[first] / total, 4) if total else None,
        }
    kept_name = sum(next(iter(c.values()), 0) for c in histogram.values())
    return {
        "n_images": len(selected),
        "n_pairs": n_pairs,
        "distinct_tokens": len(tokens),
        "name_share": round(kept_name / n_pairs, 4) if n_pairs else None,
        "per_class": per_class,
    }
