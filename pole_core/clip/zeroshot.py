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

The **world probe** (:func:`world_probe`) asks the question POLE's selection asks, with
the object's true extent: does the text of a token point at the object itself or at what
surrounds it? For class c and token t, over (up to N of) the images labelled with c:

- **margin(c, t)** = mean of cos(CLIP(fg), text(t)) − cos(CLIP(bg), text(t)), where
  fg keeps only the object (the image where the mask is 1) and bg removes it (where the
  mask is 0), composed as the CAM losses compose them (``masked_pairs``: masked pixels
  become the mean colour, at the CLIP input size). A token whose text CLIP reads as the
  object has a large margin; one that CLIP reads as its usual surroundings, a small or
  negative one.
- Masks: the ground truth (``gt``) and a CAM-like mask (``cam_like``, :func:`cam_like_mask`:
  the ground truth blurred, then dilated), since POLE selects on CAMs, not on ground truth.
- **name_minus_best_synonym** = margin(dataset name) − the largest synonym margin: below
  zero where a synonym describes the object better than the name does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..cam.losses import masked_pairs
from .bundle import ClipBundle

ImageSource = Sequence[np.ndarray] | Callable[[int], np.ndarray]
MASK_KINDS = ("gt", "cam_like")


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


def _checked_labels(
    caller: str,
    labels: np.ndarray,
    class_prompts: list[str],
    class_names: list[str] | None,
) -> np.ndarray:
    """Labels as an N×C bool array whose C matches the prompts (and names, when given)."""
    labels = np.asarray(labels).astype(bool)
    c = labels.shape[1]
    if c != len(class_prompts):
        raise ValueError(f"{caller}: labels have {c} classes but {len(class_prompts)} prompts")
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"{caller}: class_names and class_prompts differ in length")
    return labels


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
    labels = _checked_labels("zeroshot_eval", labels, class_prompts, class_names)
    n, c = labels.shape
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
    """A plain-text table of :func:`zeroshot_eval`'s result, for logs and docs/DEMO_WORLD.md."""

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


def cam_like_mask(mask: np.ndarray, *, blur: float = 0.04, dilate: float = 0.08) -> np.ndarray:
    """A ground-truth mask as a CAM draws it: blurred (Gaussian, sigma = ``blur`` × the long
    side), then grey-dilated by a disk of radius ``dilate`` × the long side; float32 in [0, 1].

    CAMs fade at the object's edge and spill onto its surroundings: the probe's second mask
    asks whether a token's advantage survives what the selection actually sees.
    """
    import cv2  # OpenCV: about 20x faster than scipy.ndimage at VOC sizes (40 px disk)

    m = np.ascontiguousarray(mask, dtype=np.float32)
    side = max(m.shape)
    if blur > 0:
        m = cv2.GaussianBlur(m, (0, 0), blur * side, borderType=cv2.BORDER_REPLICATE)
    r = int(round(dilate * side))
    if r > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        m = cv2.dilate(m, disk, borderType=cv2.BORDER_REPLICATE)
    return np.clip(m, 0.0, 1.0).astype(np.float32)


class _MarginAccumulator:
    """Encodes fg/bg images a batch at a time and sums cos(fg, t) − cos(bg, t) per class and kind."""

    def __init__(self, bundle: ClipBundle, text: list[torch.Tensor], batch_size: int):
        self.bundle = bundle
        self.text = text
        self.batch_size = batch_size
        self.pending: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []
        self.sums: dict[tuple[int, str], torch.Tensor] = {}

    def add(self, c: int, kind: str, fg: torch.Tensor, bg: torch.Tensor) -> None:
        self.pending.append((c, kind, fg, bg))
        if 2 * len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        x = torch.stack([b[2] for b in batch] + [b[3] for b in batch])
        feats = torch.nn.functional.normalize(self.bundle.encode_image(x).float().cpu(), dim=-1)
        fg, bg = feats[: len(batch)], feats[len(batch) :]
        for j, (c, kind, _, _) in enumerate(batch):
            diff = self.text[c] @ fg[j] - self.text[c] @ bg[j]
            key = (c, kind)
            self.sums[key] = self.sums[key] + diff if key in self.sums else diff


@torch.no_grad()
def world_probe(
    bundle: ClipBundle,
    images: ImageSource,
    masks: ImageSource,
    labels: np.ndarray,
    class_prompts: list[str],
    synonyms: dict[str, list[str]] | None = None,
    template: str = "a photo of a {}.",
    *,
    class_names: list[str] | None = None,
    max_images: int = 200,
    blur: float = 0.04,
    dilate: float = 0.08,
    mask_fill: str = "mean",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Per class and candidate token, the fg − bg cosine margin; see the module docstring.

    ``images``/``masks``: uint8 H×W×3 images and H×W label maps (0 background, ``c + 1``
    class c, 255 ignored = not the object), as sequences or callables ``i -> array``;
    ``labels``: N×C multi-hot; candidates as in :func:`zeroshot_eval`. Each class uses the
    first ``max_images`` images labelled with it. Returns ``{"max_images", "blur",
    "dilate", "mask_fill", "template", "mean_name_minus_best_synonym" {kind: mean},
    "per_class" {prompt: {"n_images", "margin" {token: {"gt", "cam_like"}},
    "name_minus_best_synonym" {kind}, "best_synonym" {kind}}}}`` (NaN -> None).
    """
    labels = _checked_labels("world_probe", labels, class_prompts, class_names)
    c = labels.shape[1]
    synonyms = synonyms or {}
    cand = [
        _candidates(prompt, class_names[ci] if class_names else None, synonyms)[0]
        for ci, prompt in enumerate(class_prompts)
    ]
    text = [
        torch.nn.functional.normalize(
            torch.as_tensor(bundle.encode_text([template.format(t) for t in toks])).float().cpu(),
            dim=-1,
        )
        for toks in cand
    ]
    chosen = [np.flatnonzero(labels[:, ci])[: max(0, max_images)] for ci in range(c)]
    classes_of: dict[int, list[int]] = {}
    for ci, idx in enumerate(chosen):
        for i in idx.tolist():
            classes_of.setdefault(i, []).append(ci)

    size = int(bundle.input_size)
    acc = _MarginAccumulator(bundle, text, batch_size)
    zero = torch.zeros(1, dtype=torch.long)
    for i in sorted(classes_of):
        img = images(i) if callable(images) else images[i]
        label_map = np.asarray(masks(i) if callable(masks) else masks[i])
        if label_map.shape != img.shape[:2]:
            raise ValueError(
                f"world_probe: mask {i} is {label_map.shape}, its image {img.shape[:2]}"
            )
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        for ci in classes_of[i]:
            gt = (label_map == ci + 1).astype(np.float32)
            for kind, m in (("gt", gt), ("cam_like", cam_like_mask(gt, blur=blur, dilate=dilate))):
                p = torch.from_numpy(m)[None, None]
                fg, bg = masked_pairs(p, x, zero, zero, size=size, mask_fill=mask_fill)
                acc.add(ci, kind, fg[0], bg[0])
    acc.flush()

    per_class: dict[str, Any] = {}
    deltas: dict[str, list[float]] = {kind: [] for kind in MASK_KINDS}
    for ci, prompt in enumerate(class_prompts):
        k = len(chosen[ci])
        margin = {
            kind: (acc.sums[(ci, kind)] / k).numpy() if k else np.full(len(cand[ci]), np.nan)
            for kind in MASK_KINDS
        }
        delta, best = {}, {}
        for kind in MASK_KINDS:
            if len(cand[ci]) > 1 and k:
                j = int(np.argmax(margin[kind][1:])) + 1
                best[kind] = cand[ci][j]
                delta[kind] = _nan_to_none(float(margin[kind][0] - margin[kind][j]))
                if delta[kind] is not None:
                    deltas[kind].append(delta[kind])
            else:
                best[kind], delta[kind] = None, None
        per_class[prompt] = {
            "n_images": int(k),
            "margin": {
                t: {kind: _nan_to_none(float(margin[kind][j])) for kind in MASK_KINDS}
                for j, t in enumerate(cand[ci])
            },
            "name_minus_best_synonym": delta,
            "best_synonym": best,
        }
    return {
        "max_images": int(max_images),
        "blur": float(blur),
        "dilate": float(dilate),
        "mask_fill": mask_fill,
        "template": template,
        "mean_name_minus_best_synonym": {
            kind: _nan_to_none(float(np.mean(v))) if v else None for kind, v in deltas.items()
        },
        "per_class": per_class,
    }


def probe_markdown(probe: dict[str, Any]) -> str:
    """``probe.md``: the world probe's margins as Markdown tables (or why it did not run)."""

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:+.3f}"

    lines = ["# World probe: which token does CLIP read as the object?", ""]
    if probe.get("skipped"):
        return "\n".join([*lines, f"Not run: {probe['skipped']}.", ""])
    lines += [
        "Margin = mean over the images of a class of cos(object kept, text) − cos(object "
        f"removed, text), text = {probe['template']!r}; up to {probe['max_images']} images per "
        f"class of split {probe.get('split', '?')!r}. GT: cut by the ground-truth mask; CAM-like: "
        f"by the mask blurred (sigma {probe['blur']:g} × side) and dilated ({probe['dilate']:g} "
        "× side). The dataset name is in bold; Δ = name − best synonym (below 0: a synonym "
        "describes the object better than the name).",
        "",
        "| class | images | Δ GT | Δ CAM-like | best synonym (GT / CAM-like) |",
        "|---|---:|---:|---:|---|",
    ]
    for prompt, row in probe["per_class"].items():
        d, b = row["name_minus_best_synonym"], row["best_synonym"]
        lines.append(
            f"| {prompt} | {row['n_images']} | {f(d['gt'])} | {f(d['cam_like'])} | "
            f"{b['gt'] or '–'} / {b['cam_like'] or '–'} |"
        )
    mean = probe["mean_name_minus_best_synonym"]
    lines += [
        f"| **mean** | | {f(mean['gt'])} | {f(mean['cam_like'])} | |",
        "",
        "| class | token | margin GT | margin CAM-like |",
        "|---|---|---:|---:|",
    ]
    for prompt, row in probe["per_class"].items():
        for j, (token, m) in enumerate(row["margin"].items()):
            name = f"**{token}**" if j == 0 else token
            lines.append(f"| {prompt} | {name} | {f(m['gt'])} | {f(m['cam_like'])} |")
    lines.append("")
    return "\n".join(lines)
