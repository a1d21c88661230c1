"""Train the segmenter on pseudo-masks: SGD, poly learning rate, CE with 255 ignored.

Resumable through :class:`pole_core.training.TrainLoop`: the batch order of epoch
``e`` depends only on ``(seed, e)`` and the dataset's own ``set_epoch``, so on CPU a
resumed run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..device import autocast, resolve_device
from ..io.checkpoint import load_checkpoint, seed_everything
from ..training import RunOptions, epoch_batches, sgd_loop, steps_per_epoch
from .network import SegNet, build_seg_net

IGNORE = 255


def seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (not NaN) when a batch is all ignore."""
    valid = (mask != IGNORE).sum()
    loss = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE, reduction="sum")
    return loss / valid.clamp(min=1)


@dataclass(frozen=True)
class SegTrainParams:
    """Hyper-parameters of the segmenter (DeepLab's SGD with a poly schedule)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    momentum: float = 0.9
    seed: int = 0


def train_seg(
    net: nn.Module,
    items: Dataset,
    out_path: str | os.PathLike,
    params: SegTrainParams,
    run: RunOptions = RunOptions(),
) -> dict:
    """Train ``net`` on ``items`` ({"image", "mask", ...} dicts) and save the final checkpoint.

    The final file holds {"state_dict", "arch", "stats"} and appears only when
    training completed; the partial checkpoint is then deleted. A loss that is not
    finite stops the run with one line.
    """
    p = params
    run = run.resolved()  # "auto" resolved (and logged) once, not by every helper
    dev = run.torch_device()
    n = len(items)
    if n == 0:
        raise ValueError(f"{out_path}: no training items for the segmenter")
    n_steps = steps_per_epoch(n, p.batch_size)[0]
    arch = getattr(net, "arch", None)
    fingerprint = {**asdict(p), "n_items": n, "arch": arch}

    seed_everything(p.seed)
    net.to(dev)
    loop = sgd_loop(
        "train_seg",
        out_path,
        p,
        net.parameters(),
        n_steps=n_steps,
        modules={"net": net},
        fingerprint=fingerprint,
        run=run,
        check_finite=True,
    )
    seen = 0

    def step(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nonlocal seen
        x = batch["image"].to(dev, non_blocking=True).float()
        y = batch["mask"].to(dev, non_blocking=True).long()
        with autocast(dev):
            logits = net(x)
        loss = seg_loss(logits, y)
        seen += x.shape[0]
        return loss, {"loss": loss}

    batches = epoch_batches(items, p.batch_size, lambda epoch: p.seed * 100003 + epoch, run)
    history = loop.run(batches, step)
    losses = loop.column("loss")
    stats = {
        "epochs": p.epochs,
        "steps": loop.step,
        "loss_per_epoch": [round(v, 6) for v in losses],
        "final_loss": round(losses[-1], 6) if losses else None,
        "seconds": round(loop.run_seconds, 3),
        "images_per_s": round(seen / loop.run_seconds, 2) if loop.run_seconds > 0 else None,
        "device": str(dev),
        "resumed_from_epoch": loop.resumed_from_epoch,
        "history": history,
    }
    loop.finish(
        {
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "arch": arch,
            "stats": stats,
        }
    )
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
