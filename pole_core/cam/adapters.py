"""POLE's feature adapters for the frozen CLIP encoders (Stage B).

``A(f) = W2 · ReLU(W1 · f)`` with ``W1: D → D/reduction`` and ``W2: D/reduction → D``,
no biases, mixed into the feature by a learnable per-dimension ratio
``f' = r ⊙ A(f) + (1 − r) ⊙ f`` (``r`` starts at ``ratio``), then re-normalised,
because the CLIMS losses compare features by cosine.

Differences from the released POLE code (``clip_adapter_utils.Adapter``), chosen to
follow the paper's formula A(f) = W2 · ReLU(W1 · f): the released adapter has a second ReLU after ``W2``, and applies the
adapter to the un-normalised CLIP features; here ``A`` ends in the linear ``W2``
and receives the unit-length features that ``ClipBundle`` returns. With ``r = 0``
the adapter is the identity (up to the final normalisation, a no-op on unit inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """Residual bottleneck MLP with a learnable mixing ratio; output has unit length."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        if dim < 1 or reduction < 1:
            raise ValueError(f"Adapter: dim and reduction must be >= 1, got {dim}, {reduction}")
        hidden = max(1, dim // reduction)
        self.dim, self.reduction = int(dim), int(reduction)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.ratio = nn.Parameter(torch.full((dim,), float(ratio)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Adapt features ``f`` (…×D); the result is L2-normalised along the last axis."""
        a = self.fc2(F.relu(self.fc1(f)))
        r = self.ratio.to(f.dtype)
        return F.normalize(r * a + (1 - r) * f, dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reduction={self.reduction}"
