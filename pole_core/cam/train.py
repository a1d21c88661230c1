"""Stage A/B training: the CAM network under the CLIMS losses (+ POLE adapters).

One function, :func:`train_cam`, serves both variants of the DAG: the baseline
(prompts built from the dataset class names) and POLE (prompts from the per-image
selection table, adapters on). It follows CLIMS's released training: SGD with a
poly learning rate (power 0.9) over all steps, backbone at ``lr`` and the new head
at ``head_lr`` (CLIMS: 10 × lr), one sigmoid CAM per present class masked into a
foreground and a background image that the frozen CLIP scores. The loop around the
step (schedule, AMP, per-epoch resumable checkpoint) is :class:`pole_core.training.TrainLoop`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..device import autocast, resolve_device
from ..io.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from ..training import RunOptions, epoch_batches, partial_path, sgd_loop, steps_per_epoch
from .adapters import Adapter
from .losses import LOSS_KEYS, clims_losses, present_pairs
from .network import CamNet, build_cam_net

LOG_KEYS = ("total", *LOSS_KEYS, "cls")

Prompts = Callable[[int], Mapping[int, str]] | Sequence[Mapping[int, str]]


@dataclass(frozen=True)
class CamTrainParams:
    """Hyper-parameters of the CAM stage; the defaults are the released POLE recipe.

    ``loss_weights``: ``{otm, btm, cbs, reg}`` (CLIMS 10/24/1/0.2; POLE 10/25/1/0).
    ``head_lr``: head learning rate; None = 10 × lr (CLIMS).
    ``adapter_lr``: adapter learning rate; None = ``head_lr``. The released POLE code
    sets it as a factor × lr, with the factor not released.
    ``momentum``: IRNet/CLIMS's PolyOptimizer passes weight decay into SGD's momentum
    slot, so their effective momentum is 1e-4, i.e. none.
    ``cls_weight``: optional multi-label soft-margin loss on the GAP logits (not in the
    paper; a knob for weak CLIPs). 0 disables it.
    ``grad_clip``: clip the gradient norm of each step to this value (not in CLIMS or
    POLE, which do not clip). 0 disables it. From a classifier whose logits for an easy
    class run far above the others, one early step can push that class's head weights
    negative: its sigmoid CAM is then near 0 on every image, the CLIMS losses reach it only
    through that sigmoid's vanishing slope, and the class never comes back.
    ``mask_fill``, ``cbs_reduction``: see :func:`pole_core.cam.losses.clims_losses`.
    """

    epochs: int
    batch_size: int
    lr: float
    head_lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: {"otm": 10.0, "btm": 25.0, "cbs": 1.0, "reg": 0.0}
    )
    adapters: bool = True
    adapter_ratio: float = 0.2
    adapter_reduction: int = 4
    adapter_lr: float | None = None
    cbs_thresh: float = 0.26
    cbs_reduction: str = "sum"
    clamp: tuple[float, float] = (1e-4, 0.9999)
    cls_weight: float = 0.0
    grad_clip: float = 0.0
    bg_template: str = "a photo of {}."
    mask_fill: str = "mean"
    seed: int = 0


def build_adapters(dim: int, reduction: int = 4, ratio: float = 0.2) -> nn.ModuleDict:
    """The POLE adapter pair: one for CLIP image features, one for text features."""
    return nn.ModuleDict(
        {"image": Adapter(dim, reduction, ratio), "text": Adapter(dim, reduction, ratio)}
    )


def _prompt_for(prompts_for: Prompts, index: int, k: int) -> str:
    table = prompts_for(index) if callable(prompts_for) else prompts_for[index]
    if k in table:
        return table[k]
    if str(k) in table:  # tables read back from JSON have string keys
        return table[str(k)]
    raise KeyError(f"prompts_for: item {index} has class {k} present but no prompt for it")


def _data_digest(dataset_items: Dataset, prompts_for: Prompts) -> str:
    """Hash of the image ids (when the dataset has ``.ids``) and every item's prompts.

    Part of the resume fingerprint: a partial checkpoint from another image list or
    another prompt selection (POLE) must not be resumed.
    """
    h = hashlib.sha256()
    for img_id in getattr(dataset_items, "ids", None) or []:
        h.update(f"{img_id}\n".encode())
    for i in range(len(dataset_items)):
        table = prompts_for(i) if callable(prompts_for) else prompts_for[i]
        h.update(repr(sorted((int(k), str(v)) for k, v in table.items())).encode())
    return h.hexdigest()[:16]


def train_cam(
    net: CamNet,
    dataset_items: Dataset,
    prompts_for: Prompts,
    bundle: Any,
    out_path: str | os.PathLike,
    params: CamTrainParams,
    *,
    bg_words: Sequence[str],
    run: RunOptions = RunOptions(),
    clip_input_size: int | None = None,
) -> dict[str, Any]:
    """Train ``net`` with the CLIMS losses and save ``out_path``; returns training stats.

    Args:
        net: from :func:`build_cam_net`; trained in place (left in eval mode).
        dataset_items: items ``{"image": 3×S×S in [0,1], "labels": C, "index": i}``
            (``AugmentedDataset``); ``set_epoch(epoch)`` is called when it exists.
        prompts_for: ``i -> {class_index: prompt}`` (callable, or a list indexed by
            ``i``), the formatted text per present class, e.g. "a photo of ship.".
        bundle: frozen CLIP (``encode_image``, ``encode_text``, ``embed_dim``).
        out_path: final checkpoint ``{"state_dict", "adapters", "arch", "stats"}``.
        bg_words: CBS background words, each formatted with ``params.bg_template``.
        clip_input_size: mask at this size; default ``bundle.input_size`` if it has one.
    """
    p = params
    run = run.resolved()  # "auto" resolved (and logged) once, not by every helper
    device = run.torch_device()
    n_items = len(dataset_items)
    if n_items == 0:
        raise ValueError("train_cam: the dataset is empty")
    if p.epochs < 1 or p.batch_size < 1:
        raise ValueError(
            f"train_cam: epochs and batch_size must be >= 1, got {p.epochs}, {p.batch_size}"
        )
    head_lr = 10.0 * p.lr if p.head_lr is None else float(p.head_lr)
    n_steps = steps_per_epoch(n_items, p.batch_size)[0]
    if clip_input_size is None:
        clip_input_size = getattr(bundle, "input_size", None)
    unknown = set(p.loss_weights) - set(LOSS_KEYS)
    if unknown:
        raise ValueError(f"loss_weights: unknown terms {sorted(unknown)}; expected {LOSS_KEYS}")
    weights = {k: float(p.loss_weights.get(k, 0.0)) for k in LOSS_KEYS}
    bg_prompts = [p.bg_template.format(w) for w in bg_words]
    fingerprint = {
        **asdict(p),
        "head_lr": head_lr,
        "loss_weights": weights,
        "clamp": [float(c) for c in p.clamp],
        "arch": dict(net.arch),
        "n_items": n_items,
        "bg_words": bg_prompts,
        "clip_input_size": clip_input_size,
        "clip_embed_dim": int(bundle.embed_dim),
        "data_digest": _data_digest(dataset_items, prompts_for),
    }

    seed_everything(p.seed)
    adapter_mods = (
        build_adapters(int(bundle.embed_dim), p.adapter_reduction, p.adapter_ratio).to(device)
        if p.adapters
        else None
    )
    net.to(device)
    groups = net.param_groups(p.lr, head_lr, p.weight_decay)
    modules: dict[str, nn.Module] = {"net": net}
    if adapter_mods is not None:
        modules["adapters"] = adapter_mods
        groups.append(
            {
                "params": list(adapter_mods.parameters()),
                "lr": head_lr if p.adapter_lr is None else float(p.adapter_lr),
                "weight_decay": float(p.weight_decay),
                "name": "adapters",
            }
        )
    loop = sgd_loop(
        "train_cam",
        out_path,
        p,
        groups,
        n_steps=n_steps,
        modules=modules,
        fingerprint=fingerprint,
        run=run,
        grad_clip=p.grad_clip,
    )

    with torch.no_grad():
        bg_feats = bundle.encode_text(bg_prompts).float().to(device) if bg_prompts else None
    text_cache: dict[str, torch.Tensor] = {}

    def pair_text_feats(
        index: torch.Tensor, b_idx: torch.Tensor, k_idx: torch.Tensor
    ) -> torch.Tensor:
        """Encode each distinct prompt once (frozen CLIP, cached), adapt with grad, gather."""
        prompts = [
            _prompt_for(prompts_for, int(index[b]), int(k))
            for b, k in zip(b_idx.tolist(), k_idx.tolist(), strict=True)
        ]
        distinct = sorted(set(prompts))
        new = [t for t in distinct if t not in text_cache]
        if new:
            with torch.no_grad():
                for t, f in zip(new, bundle.encode_text(new).float().to(device), strict=True):
                    text_cache[t] = f
        feats = torch.stack([text_cache[t] for t in distinct])
        if adapter_mods is not None:
            feats = adapter_mods["text"](feats)
        pos = {t: i for i, t in enumerate(distinct)}
        return feats[torch.tensor([pos[t] for t in prompts], device=device, dtype=torch.long)]

    def step(batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch["image"].to(device, non_blocking=True).float()
        labels = batch["labels"].to(device, non_blocking=True).float()
        b_idx, k_idx = present_pairs(labels)
        with autocast(device):
            logits = net(images)
            probs = torch.sigmoid(logits.float())
            tf = (
                pair_text_feats(batch["index"], b_idx, k_idx)
                if b_idx.numel()
                else torch.zeros(0, 1, device=device)
            )
            losses = clims_losses(
                probs,
                images,
                labels,
                bundle,
                tf,
                bg_feats,
                weights=weights,
                clamp=p.clamp,
                cbs_thresh=p.cbs_thresh,
                image_adapter=adapter_mods["image"] if adapter_mods is not None else None,
                clip_input_size=clip_input_size,
                mask_fill=p.mask_fill,
                cbs_reduction=p.cbs_reduction,
            )
            total = losses["total"]
            if p.cls_weight:
                cls = F.multilabel_soft_margin_loss(logits.float().mean(dim=(2, 3)), labels)
                total = total + p.cls_weight * cls
            else:
                cls = total.new_zeros(())
        logged = {"total": total, **{k: losses[k].float() for k in LOSS_KEYS}, "cls": cls}
        logged["pairs"] = float(losses["n_pairs"])
        return total, logged

    batches = epoch_batches(dataset_items, p.batch_size, lambda epoch: p.seed + epoch, run)
    history = loop.run(batches, step)
    net.eval()
    stats: dict[str, Any] = {
        "epochs": history,
        "steps": loop.step,
        "steps_per_epoch": n_steps,
        "resumed_from_epoch": loop.resumed_from_epoch,
        "seconds_per_step": loop.seconds_per_step,
        "final_loss": history[-1]["total"] if history else None,
        "settings": fingerprint,
    }
    adapters_state = None
    if adapter_mods is not None:
        adapters_state = {
            "dim": int(bundle.embed_dim),
            "reduction": int(p.adapter_reduction),
            "ratio": float(p.adapter_ratio),
            "state_dict": {k: v.detach().cpu() for k, v in adapter_mods.state_dict().items()},
        }
    loop.finish(cam_net_checkpoint(net, stats, adapters_state))
    return stats


def cam_net_checkpoint(
    net: CamNet, stats: dict[str, Any], adapters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A CAM network in the layout :func:`load_cam_net` reads."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "adapters": adapters,
        "arch": dict(net.arch),
        "stats": stats,
    }


def save_cam_net(
    path: str | os.PathLike,
    net: CamNet,
    stats: dict[str, Any],
    adapters: dict[str, Any] | None = None,
) -> None:
    """Write a CAM network in the layout :func:`load_cam_net` reads (atomically)."""
    save_checkpoint(path, cam_net_checkpoint(net, stats, adapters))


def load_cam_net(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[CamNet, nn.ModuleDict | None, dict[str, Any]]:
    """Rebuild a trained CAM network (eval mode) from a :func:`train_cam` output.

    Returns ``(net, adapters, meta)``: adapters is a ``ModuleDict`` with "image" and
    "text" :class:`Adapter` s, or None; meta holds "arch", "stats" and "path". A
    damaged file or one that is not a CAM checkpoint fails with one line naming it.
    """
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    ck = load_checkpoint(path, map_location="cpu")
    if not isinstance(ck, dict) or not isinstance(ck.get("arch"), dict) or "state_dict" not in ck:
        raise ValueError(
            f"{path}: not a CAM network checkpoint (expected keys 'state_dict' and 'arch')"
        )
    arch = dict(ck["arch"])
    try:
        net = build_cam_net(**arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid 'arch' {arch} ({err})") from None
    try:
        net.load_state_dict(ck["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: weights do not match arch {arch} ({first})") from None
    adapters = None
    if ck.get("adapters"):
        a = ck["adapters"]
        try:
            adapters = build_adapters(int(a["dim"]), int(a["reduction"]), float(a["ratio"]))
            adapters.load_state_dict(a["state_dict"], strict=True)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path}: damaged 'adapters' entry ({type(err).__name__}: {err})"
            ) from None
        adapters.to(device).eval()
    net.to(device).eval()
    meta = {"arch": arch, "stats": ck.get("stats", {}), "path": str(path)}
    return net, adapters, meta


__all__ = [
    "CamTrainParams",
    "build_adapters",
    "cam_net_checkpoint",
    "load_cam_net",
    "partial_path",
    "save_cam_net",
    "train_cam",
]
