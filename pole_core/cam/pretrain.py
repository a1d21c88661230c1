"""The CAM network's starting point when no ImageNet weights exist: a plain CAM classifier.

CLIMS and POLE start their CAM network from ImageNet weights, so the CLIP-guided
losses only have to *place* activations that already separate objects from
scenes. The demo world has no such weights, and a network trained from scratch by
the CLIP losses alone is slow to learn and noisy: two variants trained from two
random starts differ by more than the prompts make them differ. This module gives
both variants one shared, better start: the classic CAM network (IRNet step 1), a
multi-label classifier on global-average-pooled head logits, trained on the
training split's image-level labels (the only supervision WSSS has).

Resumable like the other trainers: a per-epoch ``<out>.partial.pt`` with the full
state; the final file has the :func:`pole_core.cam.train.load_cam_net` layout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..device import autocast, grad_scaler, resolve_device
from ..io.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .network import CamNet
from .train import _poly_lr, partial_path, save_cam_net


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRNet's CAM loss: multi-label soft margin on the global average of the logit map."""
    return F.multilabel_soft_margin_loss(logits.float().mean(dim=(2, 3)), labels.float())


def pretrain_cam_classifier(
    net: CamNet,
    items: Dataset,
    out_path: str | os.PathLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    head_lr: float,
    weight_decay: float,
    seed: int,
    device: str | torch.device = "auto",
    momentum: float = 0.9,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``net`` as a multi-label classifier on ``items`` ({"image", "labels"}); save it.

    SGD with the poly schedule of :func:`pole_core.cam.train.train_cam` (backbone at
    ``lr``, head at ``head_lr``). Returns per-epoch loss and accuracy stats.
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    out_path = Path(out_path)
    part = partial_path(out_path)
    n = len(items)
    if n == 0:
        raise ValueError(f"{out_path}: no training items for the CAM classifier")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"{out_path}: epochs and batch_size must be >= 1")
    drop_last = n >= batch_size
    steps_per_epoch = n // batch_size if drop_last else 1
    max_steps = epochs * steps_per_epoch
    fingerprint = {
        "arch": dict(net.arch),
        "n_items": n,
        "ids": list(getattr(items, "ids", []) or []),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "head_lr": float(head_lr),
        "weight_decay": float(weight_decay),
        "momentum": float(momentum),
        "seed": int(seed),
    }

    seed_everything(seed)
    net.to(dev)
    groups = net.param_groups(lr, head_lr, weight_decay)
    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = grad_scaler(dev)
    start_epoch, step, history = 0, 0, []
    if part.is_file():
        ck = load_checkpoint(part, map_location="cpu")
        if ck.get("fingerprint") == fingerprint:
            net.load_state_dict(ck["net"])
            opt.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            start_epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(ck["history"])
            set_rng_state(ck["rng"])
            log(f"pretrain_cam: resuming from {part} after epoch {start_epoch}/{epochs}")
        else:
            log(f"pretrain_cam: {part} was written with other settings; starting fresh")

    stopped = False
    for epoch in range(start_epoch, epochs):
        net.train()
        if hasattr(items, "set_epoch"):
            items.set_epoch(epoch)
        gen = torch.Generator().manual_seed(int(seed) + epoch)
        loader = DataLoader(
            items,
            batch_size=batch_size,
            shuffle=True,
            generator=gen,
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=dev.type == "cuda",
        )
        bar = loader
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(loader, desc=f"pretrain_cam {epoch + 1}/{epochs}", leave=False)
        loss_sum, correct, total, n_steps, t0 = 0.0, 0.0, 0, 0, time.perf_counter()
        for batch in bar:
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped = True
                break
            images = batch["image"].to(dev, non_blocking=True).float()
            labels = batch["labels"].to(dev, non_blocking=True).float()
            _poly_lr(opt, step, max_steps)
            with autocast(dev):
                logits = net(images)
                loss = classification_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            n_steps += 1
            loss_sum += float(loss.detach())
            pred = logits.detach().float().mean(dim=(2, 3)) > 0
            correct += float((pred == (labels > 0.5)).float().sum())
            total += labels.numel()
            if progress:
                bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
        if progress:
            bar.close()
        if stopped:
            log(f"pretrain_cam: stopped after {step} steps (stop_after_steps)")
            break
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(n_steps, 1),
            "label_accuracy": correct / max(total, 1),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        history.append(row)
        log(
            f"pretrain_cam epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f} "
            f"label accuracy {row['label_accuracy']:.3f} ({row['seconds']:.1f}s)"
        )
        save_checkpoint(
            part,
            {
                "epoch": epoch + 1,
                "step": step,
                "net": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "rng": rng_state(),
                "fingerprint": fingerprint,
            },
        )

    net.eval()
    stats = {
        "epochs": history,
        "steps": step,
        "resumed_from_epoch": start_epoch,
        "stopped": stopped,
    }
    if stopped:
        return stats
    save_cam_net(out_path, net, stats)
    part.unlink(missing_ok=True)
    return stats


__all__ = ["classification_loss", "pretrain_cam_classifier"]
