"""The real DAG on config/smoke.yaml: it runs end to end, and a parameter change reruns only what it affects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_utils import planned_jobs, snakemake

STAGES_ALL = {
    "world",
    "clip_pretrain",
    "clip_zeroshot",
    "train_cam",
    "extract_cams",
    "gather_cams",
    "eval_cam",
    "select_prompts",
    "crf",
    "eval_crf",
    "train_affinity",
    "random_walk",
    "pseudo_masks",
    "eval_pseudo",
    "export",
    "train_seg",
    "eval_seg",
    "summary",
    "figures",
    "all",
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One full run of the smoke DAG, shared by the tests of this module."""
    work = tmp_path_factory.mktemp("smoke")
    snakemake(work)
    return work


def test_fresh_dry_run_plans_every_stage(tmp_path):
    jobs = planned_jobs(tmp_path)
    assert set(jobs) == STAGES_ALL
    assert jobs["train_cam"] == 2  # baseline and pole
    assert jobs["extract_cams"] == 4  # 2 variants x 2 shards


def test_smoke_dag_runs_end_to_end(smoke_run):
    r = smoke_run / "results_smoke"
    summary = json.loads((r / "summary.json").read_text())
    for stage in (
        "cam_baseline",
        "cam_pole",
        "crf_pole",
        "pseudo_pole",
        "pseudo_baseline",
        "seg_val",
    ):
        value = summary["miou"][stage]
        assert 0.0 <= value <= 100.0, stage
    selected = json.loads((r / "prompts" / "selected.json").read_text())
    train_ids = (r / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert set(selected) == set(train_ids)
    assert sorted(p.stem for p in (r / "pseudo_masks" / "pole").glob("*.png")) == sorted(train_ids)
    assert (r / "figures" / "overlays.png").stat().st_size > 0
    assert planned_jobs(smoke_run) == {}


def test_world_change_reruns_world_and_downstream(smoke_run):
    jobs = planned_jobs(smoke_run, "--config", "world={n_train: 25}")
    assert (
        "world" in jobs and "clip_pretrain" in jobs and "train_cam" in jobs and "train_seg" in jobs
    )


def test_clip_training_change_does_not_rerun_world(smoke_run):
    jobs = planned_jobs(smoke_run, "--config", "clip={pretrain: {lr: 0.001}}")
    assert "clip_pretrain" in jobs and "train_cam" in jobs
    assert "world" not in jobs


def test_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    proc = snakemake(tmp_path, "--dry-run", "--config", "seed=abc", check=False)
    assert proc.returncode != 0
    assert "config: seed = 'abc' is not of type integer" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "--dry-run", "--config", "sede=1", check=False)
    assert proc.returncode != 0
    assert "config: unknown key sede" in proc.stdout + proc.stderr
