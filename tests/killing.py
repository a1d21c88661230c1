"""Simulated kills for the resume tests: no test hook in the trainers' signatures.

Every trainer steps through :class:`pole_core.training.TrainLoop`; patching its optimizer
step to raise after ``n`` steps stops a run as a kill would, mid-epoch, leaving what a
killed process leaves: the last finished epoch's partial checkpoint and no final file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pole_core.training import TrainLoop


class Killed(Exception):
    """Raised in place of the optimizer step that a kill interrupted."""


@contextmanager
def killed_after_steps(n: int) -> Iterator[None]:
    """Within the block, the first training run dies before its ``n + 1``-th step."""
    real = TrainLoop._optimizer_step
    taken = 0

    def step(self: TrainLoop, loss) -> None:
        nonlocal taken
        if taken >= n:
            raise Killed(f"killed after {n} steps")
        taken += 1
        real(self, loss)

    TrainLoop._optimizer_step = step
    try:
        with pytest.raises(Killed):
            yield
    finally:
        TrainLoop._optimizer_step = real
