"""Train the segmenter on pseudo-masks: SGD, poly learning rate, CE with 255 ignored.

Resumable: after every epoch the full training state (model, optimizer, AMP
scaler, epoch, step, RNG) goes atomically to ``<out_path>.partial.pt``; a
restart continues from the next epoch. The batch order of epoch ``e`` depends
only on ``(seed, e)`` and the dataset's own ``set_epoch``, so on CPU a resumed
run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..device import autocast, grad_scaler, resolve_device
from ..io.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .network import SegNet, build_seg_net

IGNORE = 255
POLY_POWER = 0.9


def partial_path(out_path: str | os.PathLike) -> Path:
    """Where the per-epoch resumable checkpoint of ``out_path`` lives."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial.pt")


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = POLY_POWER) -> float:
    """DeepLab's poly schedule: base_lr · (1 − step/total)^power."""
    return base_lr * (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power


def seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (not NaN) when a batch is all ignore."""
    valid = (mask != IGNORE).sum()
    loss = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE, reduction="sum")
    return loss / valid.clamp(min=1)


def train_seg(
    net: nn.Module,
    items: Dataset,
    out_path: str | os.PathLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    seed: int,
    device: str | torch.device = "auto",
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    stop_after_steps: int | None = None,
) -> dict:
    """Train ``net`` on ``items`` ({"image", "mask", ...} dicts) and save the final checkpoint.

    The final file holds {"state_dict", "arch", "stats"} and appears only when
    training completed; the partial checkpoint is then deleted.
    ``stop_after_steps`` ends the run after that many optimizer steps without a
    final file (kill-and-resume tests); the stats then carry ``"stopped": True``.
    """
    out_path = Path(out_path)
    partial = partial_path(out_path)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    n = len(items)
    if n == 0:
        raise ValueError(f"{out_path}: no training items for the segmenter")
    drop_last = n >= batch_size
    steps_per_epoch = n // batch_size if drop_last else 1
    total_steps = epochs * steps_per_epoch
    config = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "seed": seed,
        "n_items": n,
        "arch": getattr(net, "arch", None),
    }

    seed_everything(seed)
    net.to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = grad_scaler(dev)
    start_epoch, step, history = 0, 0, []

    if partial.is_file():
        state = load_checkpoint(partial, map_location="cpu")
        if state.get("config") == config:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, step, history = (
                state["epoch"],
                state["step"],
                list(state["loss_per_epoch"]),
            )
            set_rng_state(state["rng"])
            log(f"train_seg: resuming {partial} after epoch {start_epoch}/{epochs} (step {step})")
        else:
            log(f"train_seg: ignoring {partial}: it was written with other settings")

    t0, seen = time.perf_counter(), 0
    stopped = False
    for epoch in range(start_epoch, epochs):
        net.train()
        if hasattr(items, "set_epoch"):
            items.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        loader = DataLoader(
            items,
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            num_workers=workers,
            generator=gen,
            pin_memory=dev.type == "cuda",
        )
        total, count = 0.0, 0
        bar = tqdm(
            loader, desc=f"seg epoch {epoch + 1}/{epochs}", disable=not progress, leave=False
        )
        for batch in bar:
            x = batch["image"].to(dev, non_blocking=True).float()
            y = batch["mask"].to(dev, non_blocking=True).long()
            for group in opt.param_groups:
                group["lr"] = poly_lr(lr, step, total_steps)
            with autocast(dev):
                logits = net(x)
            loss = seg_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += x.shape[0]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"train_seg: loss became {value} at step {step} (lower lr?)"
                )
            total, count = total + value, count + 1
            bar.set_postfix(loss=f"{value:.4f}")
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped = True
                break
        bar.close()
        if stopped:
            log(
                f"train_seg: stopped after {step} steps (stop_after_steps), epoch {epoch + 1} unfinished"
            )
            break
        history.append(total / max(count, 1))
        log(
            f"train_seg: epoch {epoch + 1}/{epochs} loss {history[-1]:.4f} lr {poly_lr(lr, step, total_steps):.2e}"
        )
        save_checkpoint(
            partial,
            {
                "config": config,
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "loss_per_epoch": history,
                "rng": rng_state(),
            },
        )

    seconds = time.perf_counter() - t0
    stats = {
        "epochs": epochs,
        "steps": step,
        "loss_per_epoch": [round(v, 6) for v in history],
        "final_loss": round(history[-1], 6) if history else None,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / seconds, 2) if seconds > 0 else None,
        "device": str(dev),
        "stopped": stopped,
    }
    if stopped:
        return stats
    save_checkpoint(
        out_path,
        {
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "arch": config["arch"],
            "stats": stats,
        },
    )
    partial.unlink(missing_ok=True)
    return stats


def load_seg_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> SegNet:
    """Rebuild a trained segmenter from a :func:`train_seg` checkpoint, in eval mode."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("arch"), dict)
        or "state_dict" not in ckpt
    ):
        raise ValueError(f"{path}: not a segmenter checkpoint (needs 'arch' and 'state_dict')")
    net = build_seg_net(**ckpt["arch"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{path}: state dict does not fit its arch {ckpt['arch']} ({first})"
        ) from None
    return net.to(dev).eval()
