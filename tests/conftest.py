"""Shared test set-up: one torch thread (the CI machine has 2 cores), repo paths, the smoke run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from workflow_utils import snakemake

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the top-level benchmarks/ package (not installed with pole_core)
    sys.path.append(str(REPO))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One full run of the smoke DAG (config/smoke.yaml), shared by every test that needs one.

    Session-wide so that the workflow tests (dry runs against it) and the slow determinism
    test (a second run compared with it) pay for it once. Tests must not modify it.
    """
    work = tmp_path_factory.mktemp("smoke")
    snakemake(work)
    return work
