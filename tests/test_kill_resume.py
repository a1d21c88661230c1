"""Kill -9 in the middle of every long rule, resume, and get the same results; two runs agree.

One smoke run is SIGKILLed (the whole process group: Snakemake and its jobs) in turn while
each long rule is mid-work, unlocked and restarted with ``--rerun-incomplete``; after each
kill no file under results_smoke may be a half-written PNG/HDF5/checkpoint under its final
name. The resumed run must end with the same pseudo-masks (bytes) and scores as an
uninterrupted run, and the training rules must say in their logs that they resumed from
their epoch checkpoint. The same uninterrupted run, compared with the session's
``smoke_run``, is the determinism test (same config and seed on CPU: identical outputs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch
from PIL import Image
from workflow_utils import planned_jobs, snakemake, snakemake_cmd

pytestmark = pytest.mark.slow

R = "results_smoke"


def _any(pattern: str) -> Callable[[Path], bool]:
    return lambda r: next(r.glob(pattern), None) is not None


def _missing(rel: str) -> Callable[[Path], bool]:
    return lambda r: not (r / rel).exists()


def _shard_unfinished(pattern: str) -> Callable[[Path], bool]:
    """A shard folder exists without Snakemake's completion stamp."""
    return lambda r: any(not (d / ".snakemake_timestamp").exists() for d in r.glob(pattern))


@dataclass
class KillPoint:
    rule: str
    started: Callable[[Path], bool]  # the rule is mid-work: kill now
    unfinished: Callable[[Path], bool]  # checked after the kill: it really was cut short
    log: str | None = None  # training rules: this log must say it resumed


# In pipeline order; each restart runs up to the next kill point.
KILL_POINTS = [
    KillPoint(
        "clip_pretrain",
        _any("clip/model.pt.partial.pt"),
        _missing("clip/model.pt"),
        "logs/clip_pretrain/clip_pretrain.log",
    ),
    KillPoint(
        "train_cam{baseline}",
        _any("cam_net/baseline/model.pt.partial.pt"),
        _missing("cam_net/baseline/model.pt"),
        "logs/train_cam/baseline.log",
    ),
    KillPoint(
        "extract_cams{baseline}",
        _any("cams/baseline/.shard_*.tmp.*"),
        _missing("cams/baseline.h5"),
    ),
    KillPoint(
        "train_cam{pole}",
        _any("cam_net/pole/model.pt.partial.pt"),
        _missing("cam_net/pole/model.pt"),
        "logs/train_cam/pole.log",
    ),
    KillPoint(
        "crf{pole}",
        _any("crf/pole/shard_*/labels/*.png"),
        _shard_unfinished("crf/pole/shard_*"),
    ),
    KillPoint(
        "train_affinity{pole}",
        _any("affinity/pole/model.pt.partial.pt"),
        _missing("affinity/pole/model.pt"),
        "logs/train_affinity/pole.log",
    ),
    KillPoint(
        "random_walk{pole}",
        _any("rw/pole/shard_*/*.png"),
        _shard_unfinished("rw/pole/shard_*"),
    ),
    KillPoint(
        "train_seg",
        _any("seg/model.pt.partial.pt"),
        _missing("seg/model.pt"),
        "logs/train_seg/train_seg.log",
    ),
]


def run_until(work: Path, point: KillPoint, timeout: float = 400) -> float:
    """Start the smoke DAG; SIGKILL its process group once ``point`` has started. Returns seconds."""
    r = work / R
    t0 = time.monotonic()
    with open(work / f"run_{point.rule}.txt", "w") as out:
        proc = subprocess.Popen(
            snakemake_cmd(work, "--rerun-incomplete"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            while not point.started(r):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"snakemake ended (rc {proc.returncode}) before {point.rule} was mid-work:\n"
                        + (work / f"run_{point.rule}.txt").read_text()[-3000:]
                    )
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"{point.rule} did not start within {timeout}s")
                time.sleep(0.002)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - t0


def check_no_half_files(r: Path) -> list[Path]:
    """Every PNG, HDF5, checkpoint and JSON under a final name opens; returns temp leftovers."""
    leftovers = []
    for p in sorted(r.rglob("*")):
        if not p.is_file():
            continue
        if any(".tmp." in part for part in p.relative_to(r).parts):
            leftovers.append(p)  # a temporary name: never read as a result
            continue
        try:
            if p.suffix in (".png", ".jpg"):
                with Image.open(p) as im:
                    im.load()
            elif p.suffix == ".h5":
                with h5py.File(p, "r") as f:
                    for key in f:
                        f[key]["cam"][()]
            elif p.suffix == ".pt":
                torch.load(p, map_location="cpu", weights_only=False)
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except Exception as err:
            raise AssertionError(f"{p} is half-written under its final name: {err}") from err
    return leftovers


def outputs(work: Path) -> dict[str, object]:
    """What must not depend on interruptions: scores, selections, pseudo-mask bytes."""
    r = work / R
    out: dict[str, object] = {
        f"eval/{p.name}": json.loads(p.read_text()) for p in sorted((r / "eval").glob("*.json"))
    }
    out["prompts/selected.json"] = json.loads((r / "prompts" / "selected.json").read_text())
    for p in sorted((r / "pseudo_masks").glob("*/*.png")):
        out[str(p.relative_to(r))] = p.read_bytes()
    return out


def assert_same(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: different files"
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{what}: {len(differ)} outputs differ, e.g. {differ[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of config/smoke.yaml."""
    work = tmp_path_factory.mktemp("reference")
    snakemake(work)
    return work


def test_kill_at_every_long_rule_and_resume_gives_the_same_results(reference, tmp_path):
    work = tmp_path
    r = work / R
    leftovers: dict[str, list[str]] = {}
    for point in KILL_POINTS:
        seconds = run_until(work, point)
        assert point.unfinished(r), f"{point.rule} had finished before the kill"
        found = check_no_half_files(r)
        leftovers[point.rule] = [str(p.relative_to(r)) for p in found]
        print(
            f"killed in {point.rule} after {seconds:.1f}s; temp files left: {leftovers[point.rule]}"
        )
        snakemake(work, "--unlock")
    snakemake(work, "--rerun-incomplete")
    assert planned_jobs(work) == {}
    final_left = [str(p.relative_to(r)) for p in check_no_half_files(r)]
    print(f"after the resumed run, temp files left: {final_left}")
    for log in sorted((work / "logs").glob("*/*.log")):
        lines = [ln for ln in log.read_text().splitlines() if "resum" in ln or "skipped" in ln]
        if lines:
            print(f"{log.relative_to(work)}: {lines[0][:160]}")

    assert_same(outputs(work), outputs(reference), "killed-and-resumed run vs uninterrupted run")

    not_resumed = [
        p.rule for p in KILL_POINTS if p.log and "resum" not in (work / p.log).read_text()
    ]
    assert not not_resumed, f"training did not resume from its checkpoint: {not_resumed}"
    # Temporary files of killed jobs may stay behind, but only under hidden temporary names.
    for name in final_left + [n for names in leftovers.values() for n in names]:
        tmp_part = next(part for part in Path(name).parts if ".tmp." in part)
        assert tmp_part.startswith("."), name


def test_two_runs_with_the_same_config_and_seed_are_identical(smoke_run, reference):
    assert_same(outputs(reference), outputs(smoke_run), "two uninterrupted runs")
