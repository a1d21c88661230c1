"""Stage A/B training: the CAM network under the CLIMS losses (+ POLE adapters).

One function, :func:`train_cam`, serves both variants of the DAG: the baseline
(prompts built from the dataset class names) and POLE (prompts from the per-image
selection table, adapters on). It follows CLIMS's ``step/train_clims.py``: SGD with
a poly learning rate (power 0.9) over all steps, backbone at ``lr`` and the new head
at ``head_lr`` (CLIMS: 10 × lr), one sigmoid CAM per present class masked into a
foreground and a background image that the frozen CLIP scores.

Robustness: a checkpoint ``<out_path>.partial.pt`` is written (atomically) after
every epoch and picked up on restart; it carries a fingerprint of the settings, so a
partial file from a run with other settings is ignored, not resumed. With the data
order seeded from ``seed + epoch`` and the RNG state restored, a resumed CPU run
gives bit-identical weights to an uninterrupted one. The final file is written
atomically and only then is the partial file removed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..device import autocast, grad_scaler, resolve_device
from ..io.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .adapters import Adapter
from .losses import LOSS_KEYS, clims_losses, present_pairs
from .network import CamNet, build_cam_net

POLY_POWER = 0.9
LOG_KEYS = ("total", *LOSS_KEYS, "cls")

Prompts = Callable[[int], Mapping[int, str]] | Sequence[Mapping[int, str]]


def partial_path(out_path: str | os.PathLike) -> Path:
    """Where :func:`train_cam` keeps its per-epoch resumable checkpoint."""
    return Path(f"{os.fspath(out_path)}.partial.pt")


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


def _poly_lr(optimizer: torch.optim.Optimizer, step: int, max_steps: int) -> float:
    """IRNet/CLIMS PolyOptimizer: lr = lr0 · (1 − step/max_steps)^0.9, set before each step."""
    mult = (1.0 - step / max_steps) ** POLY_POWER if step < max_steps else 0.0
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * mult
    return mult


def train_cam(
    net: CamNet,
    dataset_items: Dataset,
    prompts_for: Prompts,
    bundle: Any,
    out_path: str | os.PathLike,
    *,
    bg_words: Sequence[str],
    epochs: int,
    batch_size: int,
    lr: float,
    head_lr: float | None,
    weight_decay: float,
    loss_weights: Mapping[str, float],
    adapters: bool,
    adapter_ratio: float = 0.2,
    adapter_reduction: int = 4,
    cbs_thresh: float = 0.26,
    clamp: tuple[float, float] = (1e-4, 0.9999),
    cls_weight: float = 0.0,
    seed: int,
    device: str | torch.device,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    stop_after_steps: int | None = None,
    momentum: float = 0.9,
    bg_template: str = "a photo of {}.",
    mask_fill: str = "mean",
    cbs_reduction: str = "sum",
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
        bg_words: CBS background words, each formatted with ``bg_template``.
        head_lr: head (and adapter) learning rate; None = 10 × lr (CLIMS).
        loss_weights: ``{otm, btm, cbs, reg}`` (CLIMS 10/24/1/0.2; POLE 10/25/1/0).
        adapters: train POLE's image and text adapters (at ``head_lr``).
        cls_weight: optional multi-label soft-margin loss on the GAP logits (not in the
            paper; a knob for weak demo CLIPs). 0 disables it.
        stop_after_steps: stop after this many steps in total (tests simulate a kill);
            the final file is not written, the last per-epoch partial file stays.
        momentum: SGD momentum. (IRNet/CLIMS's PolyOptimizer passes weight decay into
            SGD's momentum slot, so their effective momentum is 1e-4, i.e. none.)
        mask_fill, cbs_reduction: see :func:`pole_core.cam.losses.clims_losses`.
        clip_input_size: mask at this size; default ``bundle.input_size`` if it has one.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    out_path = Path(out_path)
    part = partial_path(out_path)
    n_items = len(dataset_items)
    if n_items == 0:
        raise ValueError("train_cam: the dataset is empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"train_cam: epochs and batch_size must be >= 1, got {epochs}, {batch_size}"
        )
    head_lr = 10.0 * lr if head_lr is None else float(head_lr)
    drop_last = n_items >= batch_size  # CLIMS drops the ragged last batch
    steps_per_epoch = n_items // batch_size if drop_last else 1
    max_steps = steps_per_epoch * epochs
    if clip_input_size is None:
        clip_input_size = getattr(bundle, "input_size", None)
    weights = {k: float(loss_weights.get(k, 0.0)) for k in LOSS_KEYS}
    unknown = set(loss_weights) - set(LOSS_KEYS)
    if unknown:
        raise ValueError(f"loss_weights: unknown terms {sorted(unknown)}; expected {LOSS_KEYS}")

    fingerprint = {
        "arch": dict(net.arch),
        "n_items": n_items,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "head_lr": head_lr,
        "weight_decay": float(weight_decay),
        "momentum": float(momentum),
        "loss_weights": weights,
        "adapters": bool(adapters),
        "adapter_ratio": float(adapter_ratio),
        "adapter_reduction": int(adapter_reduction),
        "cbs_thresh": float(cbs_thresh),
        "clamp": [float(c) for c in clamp],
        "cls_weight": float(cls_weight),
        "seed": int(seed),
        "bg_words": [bg_template.format(w) for w in bg_words],
        "mask_fill": mask_fill,
        "cbs_reduction": cbs_reduction,
        "clip_input_size": clip_input_size,
        "clip_embed_dim": int(bundle.embed_dim),
        "data_digest": _data_digest(dataset_items, prompts_for),
    }

    seed_everything(seed)
    adapter_mods = (
        build_adapters(int(bundle.embed_dim), adapter_reduction, adapter_ratio).to(device)
        if adapters
        else None
    )
    net.to(device)
    groups = net.param_groups(lr, head_lr, weight_decay)
    if adapter_mods is not None:
        groups.append(
            {
                "params": list(adapter_mods.parameters()),
                "lr": head_lr,
                "weight_decay": float(weight_decay),
                "name": "adapters",
            }
        )
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = grad_scaler(device)

    start_epoch, global_step, history = 0, 0, []
    if part.is_file():
        try:
            ck = load_checkpoint(part, map_location="cpu")
        except ValueError as err:
            log(f"train_cam: ignoring damaged partial checkpoint ({err}); starting fresh")
            ck = None
        if ck is not None and ck.get("fingerprint") != fingerprint:
            log(f"train_cam: {part} was written with other settings; starting fresh")
            ck = None
        if ck is not None:
            net.load_state_dict(ck["net"])
            if adapter_mods is not None:
                adapter_mods.load_state_dict(ck["adapters"])
            optimizer.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            start_epoch, global_step, history = (
                int(ck["epoch"]),
                int(ck["global_step"]),
                list(ck["history"]),
            )
            set_rng_state(ck["rng"])
            log(f"train_cam: resuming from {part} after epoch {start_epoch}/{epochs}")

    with torch.no_grad():
        bg_feats = (
            bundle.encode_text(fingerprint["bg_words"]).float().to(device)
            if len(bg_words)
            else None
        )
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
        new = [p for p in distinct if p not in text_cache]
        if new:
            with torch.no_grad():
                for p, f in zip(new, bundle.encode_text(new).float().to(device), strict=True):
                    text_cache[p] = f
        feats = torch.stack([text_cache[p] for p in distinct])
        if adapter_mods is not None:
            feats = adapter_mods["text"](feats)
        pos = {p: i for i, p in enumerate(distinct)}
        return feats[torch.tensor([pos[p] for p in prompts], device=device, dtype=torch.long)]

    net.train()
    if adapter_mods is not None:
        adapter_mods.train()
    stopped = False
    run_steps, run_seconds = 0, 0.0
    for epoch in range(start_epoch, epochs):
        if hasattr(dataset_items, "set_epoch"):
            dataset_items.set_epoch(epoch)
        gen = torch.Generator()
        gen.manual_seed(int(seed) + epoch)
        loader = DataLoader(
            dataset_items,
            batch_size=batch_size,
            shuffle=True,
            generator=gen,
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
        )
        sums = dict.fromkeys(LOG_KEYS, 0.0)
        n_pairs, n_steps, t0 = 0, 0, time.perf_counter()
        bar = loader
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                loader, desc=f"train_cam {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True
            )
        for batch in bar:
            if stop_after_steps is not None and global_step >= stop_after_steps:
                stopped = True
                break
            t_step = time.perf_counter()
            images = batch["image"].to(device, non_blocking=True).float()
            labels = batch["labels"].to(device, non_blocking=True).float()
            index = batch["index"]
            _poly_lr(optimizer, global_step, max_steps)
            b_idx, k_idx = present_pairs(labels)
            with autocast(device):
                logits = net(images)
                probs = torch.sigmoid(logits.float())
                tf = (
                    pair_text_feats(index, b_idx, k_idx)
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
                    clamp=clamp,
                    cbs_thresh=cbs_thresh,
                    image_adapter=adapter_mods["image"] if adapter_mods is not None else None,
                    clip_input_size=clip_input_size,
                    mask_fill=mask_fill,
                    cbs_reduction=cbs_reduction,
                )
                total = losses["total"]
                if cls_weight:
                    cls = F.multilabel_soft_margin_loss(logits.float().mean(dim=(2, 3)), labels)
                    total = total + cls_weight * cls
                else:
                    cls = total.new_zeros(())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            vals = torch.stack(
                [total.detach(), *(losses[k].detach().float() for k in LOSS_KEYS), cls.detach()]
            ).tolist()
            for k, v in zip(LOG_KEYS, vals, strict=True):
                sums[k] += v
            n_pairs += int(losses["n_pairs"])
            n_steps += 1
            run_steps += 1
            run_seconds += time.perf_counter() - t_step
            if progress:
                bar.set_postfix({k: f"{v:.3f}" for k, v in zip(LOG_KEYS, vals, strict=True)})
        if progress:
            bar.close()
        if stopped:
            log(f"train_cam: stopped after {global_step} steps (stop_after_steps)")
            break
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **{k: sums[k] / max(n_steps, 1) for k in LOG_KEYS}}
        row.update(
            steps=n_steps,
            pairs=n_pairs,
            seconds=round(seconds, 3),
            lr=optimizer.param_groups[0]["lr"],
        )
        history.append(row)
        log(
            f"train_cam epoch {epoch + 1}/{epochs}: "
            + " ".join(f"{k} {row[k]:.4f}" for k in LOG_KEYS)
            + f" ({n_steps} steps, {seconds:.1f}s)"
        )
        save_checkpoint(
            part,
            {
                "epoch": epoch + 1,
                "global_step": global_step,
                "net": net.state_dict(),
                "adapters": adapter_mods.state_dict() if adapter_mods is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "rng": rng_state(),
                "fingerprint": fingerprint,
            },
        )

    net.eval()
    stats: dict[str, Any] = {
        "epochs": history,
        "steps": global_step,
        "steps_per_epoch": steps_per_epoch,
        "resumed_from_epoch": start_epoch,
        "seconds_per_step": run_seconds / run_steps if run_steps else None,
        "final_loss": history[-1]["total"] if history else None,
        "stopped": stopped,
        "settings": fingerprint,
    }
    if stopped:
        return stats
    adapters_state = None
    if adapter_mods is not None:
        adapters_state = {
            "dim": int(bundle.embed_dim),
            "reduction": int(adapter_reduction),
            "ratio": float(adapter_ratio),
            "state_dict": {k: v.detach().cpu() for k, v in adapter_mods.state_dict().items()},
        }
    save_cam_net(out_path, net, stats, adapters_state)
    part.unlink(missing_ok=True)
    return stats


def save_cam_net(
    path: str | os.PathLike,
    net: CamNet,
    stats: dict[str, Any],
    adapters: dict[str, Any] | None = None,
) -> None:
    """Write a CAM network in the layout :func:`load_cam_net` reads (atomically)."""
    save_checkpoint(
        path,
        {
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "adapters": adapters,
            "arch": dict(net.arch),
            "stats": stats,
        },
    )


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


__all__ = ["build_adapters", "load_cam_net", "partial_path", "save_cam_net", "train_cam"]
