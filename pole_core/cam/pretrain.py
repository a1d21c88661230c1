"""The CAM network's starting point when no ImageNet weights exist: a plain CAM classifier.

CLIMS and POLE start their CAM network from ImageNet weights, so the CLIP-guided
losses only have to *place* activations that already separate objects from
scenes. The demo world has no such weights, and a network trained from scratch by
the CLIP losses alone is slow to learn and noisy: two variants trained from two
random starts differ by more than the prompts make them differ. This module gives
both variants one shared, better start: the classic CAM network (IRNet step 1), a
multi-label classifier on global-average-pooled head logits, trained on the
training split's image-level labels (the only supervision WSSS has).

Resumable like the other trainers (:class:`pole_core.training.TrainLoop`); the final
file has the :func:`pole_core.cam.train.load_cam_net` layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..device import autocast
from ..io.checkpoint import seed_everything
from ..training import RunOptions, epoch_batches, sgd_loop, steps_per_epoch
from .network import CamNet
from .train import cam_net_checkpoint


@dataclass(frozen=True)
class PretrainParams:
    """IRNet step 1's schedule (run_sample.py: 5 epochs, batch 16, lr 0.1, head 10 × lr)."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    head_lr: float = 1.0
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    seed: int = 0


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRNet's CAM loss: multi-label soft margin on the global average of the logit map."""
    return F.multilabel_soft_margin_loss(logits.float().mean(dim=(2, 3)), labels.float())


def pretrain_cam_classifier(
    net: CamNet,
    items: Dataset,
    out_path: str | os.PathLike,
    params: PretrainParams,
    run: RunOptions = RunOptions(),
) -> dict[str, Any]:
    """Train ``net`` as a multi-label classifier on ``items`` ({"image", "labels"}); save it.

    SGD with the poly schedule of the CAM stage (backbone at ``lr``, head at
    ``head_lr``). Returns per-epoch loss and label-accuracy stats.
    """
    p = params
    run = run.resolved()  # "auto" resolved (and logged) once, not by every helper
    dev = run.torch_device()
    n = len(items)
    if n == 0:
        raise ValueError(f"{out_path}: no training items for the CAM classifier")
    if p.epochs < 1 or p.batch_size < 1:
        raise ValueError(f"{out_path}: epochs and batch_size must be >= 1")
    n_steps = steps_per_epoch(n, p.batch_size)[0]
    fingerprint = {
        **asdict(p),
        "arch": dict(net.arch),
        "n_items": n,
        "ids": list(getattr(items, "ids", []) or []),
    }

    seed_everything(p.seed)
    net.to(dev)
    loop = sgd_loop(
        "pretrain_cam",
        out_path,
        p,
        net.param_groups(p.lr, p.head_lr, p.weight_decay),
        n_steps=n_steps,
        modules={"net": net},
        fingerprint=fingerprint,
        run=run,
    )

    def step(batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch["image"].to(dev, non_blocking=True).float()
        labels = batch["labels"].to(dev, non_blocking=True).float()
        with autocast(dev):
            logits = net(images)
            loss = classification_loss(logits, labels)
        pred = logits.detach().float().mean(dim=(2, 3)) > 0
        return loss, {"loss": loss, "label_accuracy": (pred == (labels > 0.5)).float().mean()}

    batches = epoch_batches(items, p.batch_size, lambda epoch: p.seed + epoch, run)
    history = loop.run(batches, step)
    net.eval()
    stats = {"epochs": history, "steps": loop.step, "resumed_from_epoch": loop.resumed_from_epoch}
    loop.finish(cam_net_checkpoint(net, stats))
    return stats


__all__ = ["PretrainParams", "classification_loss", "pretrain_cam_classifier"]
