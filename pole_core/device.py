"""Device choice and mixed precision, from one config value."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Map the config's ``device`` ("auto" | "cpu" | "cuda[:N]") to a torch device.

    "auto" picks CUDA when available. Asking for CUDA on a machine without it is an
    error, not a silent fallback, so a GPU run never quietly becomes a CPU run.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available on this machine")
    return dev


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16/float16 autocast on CUDA (AMP); a no-op on CPU, which keeps CPU runs bit-exact."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
