"""Zero-shot evaluation of a CLIP on multi-label images, per class token.

The POLE premise is that a class's dataset name is not always the text CLIP
understands best. This module measures it directly: for every class and every
candidate token (the dataset prompt and each synonym), how well does the text
"a photo of a {token}." rank the images that contain the class?

Definitions (all computed over the given images):

- **AP(class c, token t)**: average precision of ranking all images by the
  cosine between the image embedding and the text embedding of
  ``template.format(t)``, with the images labelled with c as positives
  (mean over positives of the precision at their rank; ties broken by image
  order). NaN (reported as None) for a class without positive images.
- **map_names**: mean over classes of AP(c, dataset prompt).
- **map_best_synonym**: mean over classes of the best AP among the class's
  synonyms (the dataset prompt when a class has none). The best is picked on
  the same images it is scored on, so it is optimistic (selection bias).
- **map_mean_synonym**: mean over classes of the average AP over the class's
  synonyms (no selection involved).
- **map_oracle**: mean over classes of the best AP over all candidates.
- **topk_acc_{names,best}**: multi-label "top-k-in-GT" accuracy: for each image
  with k ≥ 1 labels, take its k highest-scoring classes (class score = cosine
  with that class's token: the dataset prompt, or the best-synonym token) and
  count the fraction that are labelled; averaged over images.
- **top1_in_gt_{names,best}**: fraction of images whose top-scoring class is
  labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .bundle import ClipBundle

ImageSource = Sequence[np.ndarray] | Callable[[int], np.ndarray]


def average_precision(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Column-wise AP: ``scores`` N×T, ``positives`` N×T booleans; NaN where a column has none."""
    order = np.argsort(-scores, axis=0, kind="stable")
    y = np.take_along_axis(positives.astype(np.float64), order, axis=0)
    hits = np.cumsum(y, axis=0)
    precision = hits / np.arange(1, len(y) + 1)[:, None]
    n_pos = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (precision * y).sum(axis=0) / n_pos, np.nan)


def topk_in_gt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-k-in-GT accuracy, top-1-in-GT rate) of class scores N×C against multi-hot labels N×C."""
    labels = labels.astype(bool)
    k = labels.sum(axis=1)
    keep = k > 0
    if not keep.any():
        return float("nan"), float("nan")
    scores, labels, k = scores[keep], labels[keep], k[keep]
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_hits = np.take_along_axis(labels, order, axis=1)
    in_topk = np.arange(labels.shape[1])[None, :] < k[:, None]
    acc = (ranked_hits & in_topk).sum(axis=1) / k
    return float(acc.mean()), float(ranked_hits[:, 0].mean())


def _candidates(
    prompt: str, name: str | None, synonyms: dict[str, list[str]]
) -> tuple[list[str], bool]:
    """Dataset prompt first, then its synonyms (deduplicated); flag whether any synonym exists."""
    syns = None
    for key in (prompt, name, prompt.replace(" ", "")):
        if key is not None and key in synonyms:
            syns = synonyms[key]
            break
    tokens = [prompt]
    for s in syns or []:
        if s not in tokens and s != name:
            tokens.append(s)
    return tokens, len(tokens) > 1


@torch.no_grad()
def _image_features(
    bundle: ClipBundle, images: ImageSource, n: int, batch_size: int
) -> torch.Tensor:
    """Embed images in batches; each image is resized to the CLIP input size on its own."""
    size = bundle.input_size
    feats = []
    for start in range(0, n, batch_size):
        batch = []
        for i in range(start, min(n, start + batch_size)):
            img = images(i) if callable(images) else images[i]
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)
            if t.shape[-2:] != (size, size):
                t = torch.nn.functional.interpolate(
                    t[None], size=(size, size), mode="bilinear", align_corners=False
                )[0]
            batch.append(t)
        feats.append(bundle.encode_image(torch.stack(batch)).cpu())
    return torch.cat(feats)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def zeroshot_eval(
    bundle: ClipBundle,
    images: ImageSource,
    labels: np.ndarray,
    class_prompts: list[str],
    synonyms: dict[str, list[str]] | None = None,
    template: str = "a photo of a {}.",
    *,
    class_names: list[str] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Zero-shot AP per (class, token) and multi-label accuracy; see the module docstring.

    ``images``: uint8 H×W×3 arrays (a sequence, or a callable ``i -> array``
    for ``i < len(labels)``); ``labels``: N×C multi-hot; ``class_prompts``: the
    dataset names in text form; ``synonyms``: candidate tokens keyed by class
    prompt or by ``class_names[c]``. Returns JSON-ready numbers (NaN -> None):
    ``map_names``, ``map_best_synonym``, ``map_mean_synonym``, ``map_oracle``,
    ``topk_acc_names``, ``topk_acc_best``, ``top1_in_gt_names``,
    ``top1_in_gt_best``, ``n_images`` and ``per_class`` {prompt: {"n_pos",
    "ap" {token: AP}, "name_ap", "best_synonym", "best_synonym_ap",
    "mean_synonym_ap", "best_token"}}.
    """
    labels = np.asarray(labels).astype(bool)
    n, c = labels.shape
    if c != len(class_prompts):
        raise ValueError(f"zeroshot_eval: labels have {c} classes but {len(class_prompts)} prompts")
    if class_names is not None and len(class_names) != c:
        raise ValueError("zeroshot_eval: class_names and class_prompts differ in length")
    if not callable(images) and len(images) != n:
        raise ValueError(f"zeroshot_eval: {len(images)} images but {n} label rows")
    synonyms = synonyms or {}

    cand: list[list[str]] = []
    has_syn: list[bool] = []
    for ci, prompt in enumerate(class_prompts):
        tokens, flag = _candidates(prompt, class_names[ci] if class_names else None, synonyms)
        cand.append(tokens)
        has_syn.append(flag)
    col_class = np.array([ci for ci, toks in enumerate(cand) for _ in toks])
    col_token = [t for toks in cand for t in toks]

    img = _image_features(bundle, images, n, batch_size)
    txt = bundle.encode_text([template.format(t) for t in col_token]).cpu()
    scores = (img @ txt.t()).numpy().astype(np.float64)  # N×T cosines
    ap = average_precision(scores, labels[:, col_class])

    per_class: dict[str, Any] = {}
    name_cols, best_cols = [], []
    ap_name, ap_best_syn, ap_mean_syn, ap_oracle = [], [], [], []
    col = 0
    for ci, prompt in enumerate(class_prompts):
        k = len(cand[ci])
        aps = ap[col : col + k]
        name_ap = aps[0]
        syn_aps = aps[1:] if has_syn[ci] else aps[:1]
        if np.all(np.isnan(syn_aps)):
            best_syn_i = 0
        else:
            best_syn_i = int(np.nanargmax(syn_aps)) + (1 if has_syn[ci] else 0)
        best_i = 0 if np.all(np.isnan(aps)) else int(np.nanargmax(aps))
        name_cols.append(col)
        best_cols.append(col + best_syn_i)
        ap_name.append(name_ap)
        ap_best_syn.append(aps[best_syn_i])
        ap_mean_syn.append(np.nanmean(syn_aps) if not np.all(np.isnan(syn_aps)) else np.nan)
        ap_oracle.append(aps[best_i])
        per_class[prompt] = {
            "n_pos": int(labels[:, ci].sum()),
            "ap": {t: _nan_to_none(a) for t, a in zip(cand[ci], aps, strict=True)},
            "name_ap": _nan_to_none(name_ap),
            "best_synonym": cand[ci][best_syn_i],
            "best_synonym_ap": _nan_to_none(aps[best_syn_i]),
            "mean_synonym_ap": _nan_to_none(ap_mean_syn[-1]),
            "best_token": cand[ci][best_i],
        }
        col += k

    def _mean(values: list[float]) -> float | None:
        arr = np.asarray(values, dtype=np.float64)
        return None if np.all(np.isnan(arr)) else float(np.nanmean(arr))

    topk_names, top1_names = topk_in_gt(scores[:, name_cols], labels)
    topk_best, top1_best = topk_in_gt(scores[:, best_cols], labels)
    return {
        "n_images": int(n),
        "template": template,
        "map_names": _mean(ap_name),
        "map_best_synonym": _mean(ap_best_syn),
        "map_mean_synonym": _mean(ap_mean_syn),
        "map_oracle": _mean(ap_oracle),
        "topk_acc_names": _nan_to_none(topk_names),
        "topk_acc_best": _nan_to_none(topk_best),
        "top1_in_gt_names": _nan_to_none(top1_names),
        "top1_in_gt_best": _nan_to_none(top1_best),
        "per_class": per_class,
    }


def format_zeroshot(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`zeroshot_eval`'s result, for logs and the README."""

    def f(x: float | None) -> str:
        return "  -  " if x is None else f"{x:.3f}"

    lines = [
        f"zero-shot on {result['n_images']} images, template {result['template']!r}",
        f"mAP names {f(result['map_names'])} | best synonym {f(result['map_best_synonym'])} | "
        f"mean synonym {f(result['map_mean_synonym'])} | oracle {f(result['map_oracle'])}",
        f"top-k-in-GT names {f(result['topk_acc_names'])} | best {f(result['topk_acc_best'])}; "
        f"top-1-in-GT names {f(result['top1_in_gt_names'])} | best {f(result['top1_in_gt_best'])}",
        f"{'class':<16} {'n':>5}  {'name AP':>7}  {'mean syn':>8}  best synonym (AP)",
    ]
    for prompt, row in result["per_class"].items():
        lines.append(
            f"{prompt:<16} {row['n_pos']:>5}  {f(row['name_ap']):>7}  {f(row['mean_synonym_ap']):>8}  "
            f"{row['best_synonym']} ({f(row['best_synonym_ap'])})"
        )
    return "\n".join(lines)
