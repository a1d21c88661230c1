"""Checkpoints written atomically and resumed safely.

A training stage saves ``{"epoch", "model", "optimizer", "rng", ...}`` after every
epoch to ``<out>.partial.pt`` next to its final output; on restart it loads that
file and continues with the next epoch. RNG state (torch, numpy, python) travels
with it, so a resumed run on CPU gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a state dict with torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint, with one clear line naming the file when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for damaged files
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None


def rng_state() -> dict[str, Any]:
    """Capture the python, numpy and torch (CPU and CUDA) random states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch from one config seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def file_hash(path: str | os.PathLike, n_bytes: int = 1 << 20) -> str:
    """A short content hash of a file (sha256 of size + first and last MiB), for provenance."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(n_bytes))
        if size > n_bytes:
            f.seek(max(size - n_bytes, n_bytes))
            h.update(f.read(n_bytes))
    return h.hexdigest()[:16]


def mismatch_summary(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """Parts of a one-line state-dict mismatch error: "3 missing (e.g. layer1.0.conv1.weight)"."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return parts
