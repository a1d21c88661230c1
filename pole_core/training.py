"""One resumable training loop for every stage that trains a network.

Five stages train: the mini-CLIP, the CAM classifier (IRNet step 1), the CAM network
under the CLIMS losses, the boundary network and the segmenter. They differ in what
one step computes; what surrounds the step is the same and lives here: the
learning-rate schedule, AMP with a ``GradScaler``, gradient clipping, progress and
per-epoch logging, and a resumable checkpoint.

Resume: after every epoch ``<out>.partial.pt`` holds the trained modules, the
optimizer, the scaler, the step, the history and the RNG state, with a fingerprint
of the settings. A restart with the same fingerprint continues with the next epoch;
a partial file from other settings (or a damaged one) is ignored, never mixed in.
Each stage draws its epoch's data order from its seed and the epoch, or from the
restored global RNG, so a resumed CPU run gives bit-identical weights to an
uninterrupted one. The final output is written atomically and only then is the
partial file removed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .device import grad_scaler, resolve_device
from .io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

POLY_POWER = 0.9

# (base learning rate of a parameter group, global step) -> that group's learning rate
Schedule = Callable[[float, int], float]
# one batch -> (loss to minimise, values to log: tensors or floats)
StepFn = Callable[[Any], tuple[torch.Tensor, Mapping[str, Any]]]


@dataclass(frozen=True)
class RunOptions:
    """How a trainer runs, apart from what it learns: on the CPU none of it changes the weights.

    ``device`` is a torch device or the config's name for one ("auto", "cpu", "cuda:N");
    ``workers`` are the data-loader processes; ``progress`` shows a bar; ``log`` takes the
    per-epoch lines.
    """

    device: str | torch.device = "auto"
    workers: int = 0
    progress: bool = True
    log: Callable[[str], Any] = print

    def torch_device(self) -> torch.device:
        """``device`` as a :class:`torch.device` (names resolved by :func:`resolve_device`)."""
        if isinstance(self.device, torch.device):
            return self.device
        return resolve_device(self.device)

    def resolved(self) -> RunOptions:
        """These options with ``device`` resolved once, for a trainer that hands them on."""
        return replace(self, device=self.torch_device())


def partial_path(out_path: str | os.PathLike) -> Path:
    """Where the per-epoch resumable checkpoint of ``out_path`` lives."""
    return Path(f"{os.fspath(out_path)}.partial.pt")


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = POLY_POWER) -> float:
    """IRNet/CLIMS's PolyOptimizer and DeepLab's schedule: base · (1 − step/total)^power."""
    if step >= total_steps:
        return 0.0
    return base_lr * (1.0 - step / total_steps) ** power


def poly_schedule(total_steps: int, power: float = POLY_POWER) -> Schedule:
    """:func:`poly_lr` over ``total_steps`` as a :data:`Schedule`."""
    return lambda base_lr, step: poly_lr(base_lr, step, total_steps, power)


def steps_per_epoch(n_items: int, batch_size: int) -> tuple[int, bool]:
    """(steps per epoch, drop_last): ragged last batches are dropped, as IRNet and CLIMS do,
    unless the dataset is smaller than one batch (then it is one short batch)."""
    drop_last = n_items >= batch_size
    return (n_items // batch_size if drop_last else 1), drop_last


def epoch_loader(
    items: Dataset,
    batch_size: int,
    epoch: int,
    *,
    order_seed: int,
    drop_last: bool,
    device: torch.device,
    workers: int = 0,
) -> DataLoader:
    """One epoch of shuffled batches whose order depends only on ``order_seed``.

    Datasets whose augmentation is keyed by the epoch get ``set_epoch(epoch)`` first.
    """
    if hasattr(items, "set_epoch"):
        items.set_epoch(epoch)
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(int(order_seed)),
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
    )


class TrainLoop:
    """Optimiser steps, schedule, AMP and checkpoint/resume around a stage's step function.

    Args:
        name: the stage, for log lines ("train_cam").
        out_path: the stage's final output; the partial checkpoint sits beside it.
        modules: what is trained and checkpointed, by name.
        optimizer: over those modules' parameters; each group's ``lr`` at construction
            is its base learning rate for ``schedule``.
        fingerprint: every setting that shapes the result; a partial checkpoint resumes
            only when its fingerprint is equal.
        train_modules: put in train mode at each epoch start (default: ``modules``), for
            stages whose module overrides ``train()`` around frozen parts.
        grad_clip: clip the gradient norm over ``clip_params`` (default: the optimizer's
            parameters) to this value; 0 = off.
        check_finite: stop with one line when the loss is not finite.
    """

    def __init__(
        self,
        name: str,
        out_path: str | os.PathLike,
        *,
        modules: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        epochs: int,
        schedule: Schedule,
        fingerprint: Mapping[str, Any],
        train_modules: Sequence[nn.Module] | None = None,
        grad_clip: float = 0.0,
        clip_params: Iterable[torch.Tensor] | None = None,
        check_finite: bool = False,
        progress: bool = True,
        log: Callable[[str], Any] = print,
    ) -> None:
        self.name = name
        self.out_path = Path(out_path)
        self.partial = partial_path(out_path)
        self.modules = dict(modules)
        self.train_modules = list(train_modules) if train_modules is not None else None
        self.optimizer = optimizer
        self.device = device
        self.epochs = int(epochs)
        self.schedule = schedule
        self.fingerprint = dict(fingerprint)
        self.grad_clip = float(grad_clip)
        self.clip_params = list(clip_params) if clip_params is not None else None
        self.check_finite = check_finite
        self.progress = progress
        self.log = log
        self.scaler = grad_scaler(device)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.epoch = 0  # epochs finished
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, Any]] = []
        self.resumed_from_epoch = 0
        self.run_steps = 0  # steps taken by this call (not the resumed ones)
        self.run_seconds = 0.0

    # ----------------------------------------------------------------- resume
    def resume(self) -> bool:
        """Continue from the partial checkpoint when it was written with these settings."""
        if not self.partial.is_file():
            return False
        try:
            ck = load_checkpoint(self.partial, map_location="cpu")
        except ValueError as err:
            self.log(f"{self.name}: ignoring damaged {self.partial} ({err}); starting afresh")
            return False
        if ck.get("fingerprint") != self.fingerprint:
            self.log(
                f"{self.name}: ignoring {self.partial}: it was written with other settings; "
                "starting afresh"
            )
            return False
        for key, module in self.modules.items():
            module.load_state_dict(ck["modules"][key])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.history = list(ck["history"])
        set_rng_state(ck["rng"])
        self.resumed_from_epoch = self.epoch
        self.log(
            f"{self.name}: resuming from {self.partial} after epoch {self.epoch}/{self.epochs}"
        )
        return True

    # ------------------------------------------------------------------- run
    def run(
        self,
        batches: Callable[[int], Iterable[Any]],
        step: StepFn,
        *,
        after_step: Callable[[], None] | None = None,
        epoch_end: Callable[[], Mapping[str, float]] | None = None,
    ) -> list[dict[str, Any]]:
        """Train the remaining epochs; ``batches(epoch)`` gives an epoch's batches.

        ``after_step`` runs after each optimizer step (e.g. a clamp); ``epoch_end``
        adds values to the epoch's history row. Returns the history (one row per
        finished epoch: the mean of each logged value, steps, seconds, lr).
        """
        for epoch in range(self.epoch, self.epochs):
            for module in self.train_modules or self.modules.values():
                module.train()
            sums: dict[str, float] = {}
            n_steps, t0 = 0, time.perf_counter()
            bar = batches(epoch)
            if self.progress:
                # plain tqdm: tqdm.auto's asyncio mix-in calls iter() once more, which would
                # draw a second shuffle from the epoch's generator and make results depend on it
                from tqdm import tqdm

                bar = tqdm(
                    bar,
                    desc=f"{self.name} {epoch + 1}/{self.epochs}",
                    leave=False,
                    dynamic_ncols=True,
                )
            for batch in bar:
                t_step = time.perf_counter()
                self._set_lr()
                loss, logged = step(batch)
                self._optimizer_step(loss)
                if after_step is not None:
                    after_step()
                self.step += 1
                values = _floats(logged)
                if self.check_finite:
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"{self.name}: loss became {value} at step {self.step} (lower lr?)"
                        )
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                n_steps += 1
                self.run_steps += 1
                self.run_seconds += time.perf_counter() - t_step
                if self.progress:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
            if self.progress:
                bar.close()
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update({k: s / max(n_steps, 1) for k, s in sums.items()})
            if epoch_end is not None:
                row.update(epoch_end())
            row.update(
                steps=n_steps, seconds=round(seconds, 3), lr=self.optimizer.param_groups[0]["lr"]
            )
            self.history.append(row)
            self.log(
                f"{self.name} epoch {epoch + 1}/{self.epochs}: "
                + " ".join(f"{k} {row[k]:.4f}" for k in sums)
                + f" ({n_steps} steps, {seconds:.1f}s)"
            )
            self.epoch = epoch + 1
            save_checkpoint(
                self.partial,
                {
                    "epoch": self.epoch,
                    "step": self.step,
                    "modules": {k: m.state_dict() for k, m in self.modules.items()},
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "history": self.history,
                    "rng": rng_state(),
                    "fingerprint": self.fingerprint,
                },
            )
        return self.history

    def finish(self, final: Mapping[str, Any]) -> None:
        """Write the final output atomically, then drop the partial checkpoint."""
        save_checkpoint(self.out_path, dict(final))
        self.partial.unlink(missing_ok=True)

    def column(self, key: str) -> list[float]:
        """One logged value per finished epoch."""
        return [row[key] for row in self.history]

    @property
    def seconds_per_step(self) -> float | None:
        return self.run_seconds / self.run_steps if self.run_steps else None

    # --------------------------------------------------------------- internals
    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(group["initial_lr"], self.step)

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = self.clip_params
            if params is None:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _floats(logged: Mapping[str, Any]) -> dict[str, float]:
    """Logged values as floats, with one device sync for all tensors."""
    keys = [k for k, v in logged.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in logged.items() if not isinstance(v, torch.Tensor)}
    if keys:
        stacked = torch.stack([logged[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, stacked, strict=True))
    return {k: out[k] for k in logged}


def epoch_batches(
    items: Dataset,
    batch_size: int,
    order_seed: Callable[[int], int],
    run: RunOptions,
) -> Callable[[int], DataLoader]:
    """``batches(epoch)`` for :meth:`TrainLoop.run`: :func:`epoch_loader` with the epoch's
    order seed ``order_seed(epoch)`` and the ragged-batch rule of :func:`steps_per_epoch`."""
    drop_last = steps_per_epoch(len(items), batch_size)[1]
    device = run.torch_device()
    return lambda epoch: epoch_loader(
        items,
        batch_size,
        epoch,
        order_seed=order_seed(epoch),
        drop_last=drop_last,
        device=device,
        workers=run.workers,
    )


def sgd_loop(
    name: str,
    out_path: str | os.PathLike,
    params: Any,
    groups: Iterable[Any],
    *,
    n_steps: int,
    modules: Mapping[str, nn.Module],
    fingerprint: Mapping[str, Any],
    run: RunOptions,
    poly_power: float = POLY_POWER,
    **loop_options: Any,
) -> TrainLoop:
    """The IRNet/CLIMS optimiser of the CAM, boundary and segmenter stages, resumed.

    SGD over ``groups`` with ``params.lr``, ``params.momentum`` and ``params.weight_decay``,
    the poly schedule over ``params.epochs × n_steps`` steps; the loop continues from a
    partial checkpoint written with the same ``fingerprint``. ``run`` gives the device,
    progress bar and log; ``loop_options`` go to :class:`TrainLoop` (``train_modules``,
    ``check_finite``).
    """
    optimizer = torch.optim.SGD(
        groups, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    loop = TrainLoop(
        name,
        out_path,
        modules=modules,
        optimizer=optimizer,
        device=run.torch_device(),
        epochs=params.epochs,
        schedule=poly_schedule(params.epochs * n_steps, poly_power),
        fingerprint=fingerprint,
        progress=run.progress,
        log=run.log,
        **loop_options,
    )
    loop.resume()
    return loop


__all__ = [
    "POLY_POWER",
    "RunOptions",
    "TrainLoop",
    "epoch_batches",
    "epoch_loader",
    "partial_path",
    "poly_lr",
    "poly_schedule",
    "sgd_loop",
    "steps_per_epoch",
]
