"""Device choice and mixed precision, from one config value."""

from __future__ import annotations

import contextlib
import logging

import torch

_log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Map the config's ``device`` ("auto" | "cpu" | "cuda[:N]") to a torch device.

    "auto" picks CUDA when available and says so when it is not. Asking for CUDA on a
    machine without it is an error, not a silent fallback, so a GPU run never quietly
    becomes a CPU run.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        _log.warning("device auto: no CUDA device visible, running on the CPU")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: {name!r} requested but no CUDA device is visible on this machine "
            "(run on a GPU node, or set device: cpu)"
        )
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step: bfloat16 where the GPU has it, else float16.

    bfloat16 keeps float32's exponent range, so small gradients (the boundary net's are
    ~1e-7) do not underflow; float16 needs the loss scaler of :func:`grad_scaler`.
    None on the CPU, which keeps CPU runs bit-exact.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(
    device: torch.device, enabled: bool = True, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Autocast on CUDA (``dtype``, default :func:`amp_dtype`); a no-op on the CPU."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=dtype or amp_dtype(device))
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active exactly when the training autocast runs in float16."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)
