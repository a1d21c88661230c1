"""The real DAG on config/smoke.yaml: it runs end to end, and a change reruns only what it affects.

The rerun table (`RERUN_CASES`) is the source of the table in docs/ARCHITECTURE.md ("What a
change reruns"); `test_rerun_table_matches_the_tests` keeps the two in step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from workflow_utils import REPO, planned_jobs, snakemake

# Every rule of the DAG, in pipeline order (the order of the rerun table).
STAGES = [
    "effective_config",
    "world",
    "clip_pretrain",
    "clip_zeroshot",
    "pretrain_cam",
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
]
STAGES_ALL = set(STAGES)

# Job counts on config/smoke.yaml: 2 variants (baseline, pole), 2 shards for cams, crf, rw.
FULL = {
    "effective_config": 1,
    "world": 1,
    "clip_pretrain": 1,
    "clip_zeroshot": 1,
    "pretrain_cam": 1,
    "train_cam": 2,
    "extract_cams": 4,
    "gather_cams": 2,
    "eval_cam": 2,
    "select_prompts": 1,
    "crf": 4,
    "eval_crf": 2,
    "train_affinity": 2,
    "random_walk": 4,
    "pseudo_masks": 2,
    "eval_pseudo": 2,
    "export": 1,
    "train_seg": 1,
    "eval_seg": 1,
    "summary": 1,
    "figures": 1,
    "all": 1,
}
SEG_AND_AFTER = {"train_seg": 1, "eval_seg": 1, "summary": 1, "figures": 1, "all": 1}
RW_AND_AFTER = {
    "random_walk": 4,
    "pseudo_masks": 2,
    "eval_pseudo": 2,
    "export": 1,
    **SEG_AND_AFTER,
}
CRF_AND_AFTER = {"crf": 4, "eval_crf": 2, "train_affinity": 2, **RW_AND_AFTER}
# One variant's chain (pole) from its CAM network on: 2 shards each, 1 of the rest.
POLE_CHAIN = {
    "train_cam": 1,
    "extract_cams": 2,
    "gather_cams": 1,
    "eval_cam": 1,
    "crf": 2,
    "eval_crf": 1,
    "train_affinity": 1,
    "random_walk": 2,
    "pseudo_masks": 1,
    "eval_pseudo": 1,
    "export": 1,
    **SEG_AND_AFTER,
}

# Adding an ablation variant: its own chain up to its scores, then the summary and figures
# (the segmenter trains on seg.variant = pole, so export/train_seg/eval_seg stay cached).
BASE_VARIANTS = (
    "baseline: {prompts: names, adapters: false, loss_weights: {otm: 10, btm: 24, cbs: 1, "
    "reg: 0.2}}, pole: {prompts: selected}"
)
NEW_VARIANT = "pole_noadapt: {prompts: selected, adapters: false}"
NEW_VARIANT_CHAIN = {
    k: v for k, v in POLE_CHAIN.items() if k not in ("export", "train_seg", "eval_seg")
}
PER_VARIANT = set(NEW_VARIANT_CHAIN) - {"summary", "figures", "all"}

# (what changes, how, exact {rule: jobs} of the dry run afterwards); every config change
# also rewrites <results_dir>/config.yaml (rule effective_config), listed by _with_config.
RERUN_CASES = [
    ("the world", "world={n_train: 25}", FULL),
    (
        "CLIP pretraining",
        "clip={pretrain: {lr: 0.001}}",
        {k: v for k, v in FULL.items() if k not in ("world", "pretrain_cam")},
    ),
    (
        "the CAM classifier start",
        "cam={pretrain: {epochs: 2}}",
        {k: v for k, v in FULL.items() if k not in ("world", "clip_pretrain", "clip_zeroshot")},
    ),
    ("a CRF parameter", "crf={bi_srgb: 3}", CRF_AND_AFTER),
    (
        "the CAM threshold sweep",
        "eval={cam_bg_thresholds: {start: 0.1, stop: 0.6, step: 0.1}}",
        {"eval_cam": 2, **CRF_AND_AFTER},
    ),
    ("a random-walk parameter", "random_walk={beta: 8}", RW_AND_AFTER),
    ("a segmenter training parameter", "seg={epochs: 3}", SEG_AND_AFTER),
    ("the synonym bank", "prompts={synonyms: {boat: [ship]}}", {"select_prompts": 1, **POLE_CHAIN}),
    ("the figures", "report={n_images: 3}", {"figures": 1, "all": 1}),
    (
        "a new CAM variant",
        f"cam={{variants: {{{BASE_VARIANTS}, {NEW_VARIANT}}}}}",
        NEW_VARIANT_CHAIN,
    ),
]
RERUN_CASES = [
    (what, change, {"effective_config": 1, **jobs}) for what, change, jobs in RERUN_CASES
]

# (edited pole_core module, exact {rule: jobs}). code_version hashes whole pole_core
# packages, so an edit reruns every rule that imports anything from the module's package.
EDIT_CASES = [
    ("pole_core/refine/random_walk.py", CRF_AND_AFTER),
    ("pole_core/seg/train.py", SEG_AND_AFTER),
]


def test_fresh_dry_run_plans_every_stage(tmp_path):
    jobs = planned_jobs(tmp_path)
    assert set(jobs) == STAGES_ALL
    assert jobs == FULL


def test_smoke_dag_runs_end_to_end(smoke_run):
    r = smoke_run / "results_smoke"
    summary = json.loads((r / "summary.json").read_text())
    stages = [f"{s}_{v}" for s in ("cam", "pseudo") for v in ("baseline", "pole")]
    for stage in [*stages, "crf_pole", "seg_val"]:
        value = summary["miou"][stage]
        assert 0.0 <= value <= 100.0, stage
    selected = json.loads((r / "prompts" / "selected.json").read_text())
    train_ids = (r / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert set(selected) == set(train_ids)
    assert sorted(p.stem for p in (r / "pseudo_masks" / "pole").glob("*.png")) == sorted(train_ids)
    assert (r / "figures" / "overlays.png").stat().st_size > 0
    assert planned_jobs(smoke_run) == {}


@pytest.mark.parametrize(
    ("what", "change", "expected"), RERUN_CASES, ids=[c[0] for c in RERUN_CASES]
)
def test_a_change_reruns_exactly_its_stages(smoke_run, what, change, expected):
    jobs = planned_jobs(smoke_run, "--config", change)
    assert jobs == expected, f"{what} ({change}): planned {jobs}"


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The repository's code (Snakefile, workflow/, pole_core/, config/, profiles/), mtimes kept."""
    skip_top = {".venv", ".git", ".snakemake", "logs", ".pytest_cache", ".ruff_cache"}

    def ignore(folder, names):
        out = {n for n in names if n == "__pycache__"}
        if Path(folder) == REPO:
            out |= {n for n in names if n in skip_top or n.startswith("results")}
        return out

    dst = tmp_path_factory.mktemp("repo_copy") / "repo"
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


def test_an_unchanged_copy_of_the_code_reruns_nothing(smoke_run, repo_copy):
    # The control for the edit cases: another checkout of the same code is not a change.
    assert planned_jobs(smoke_run, snakefile=repo_copy / "Snakefile") == {}


@pytest.mark.parametrize(("module", "expected"), EDIT_CASES, ids=[c[0] for c in EDIT_CASES])
def test_a_pole_core_edit_reruns_the_rules_that_import_it(smoke_run, repo_copy, module, expected):
    path = repo_copy / module
    original = path.read_text()
    path.write_text(original + "# an edit\n")
    try:
        jobs = planned_jobs(smoke_run, snakefile=repo_copy / "Snakefile")
    finally:
        path.write_text(original)
    assert jobs == expected, f"edit of {module}: planned {jobs}"
    assert not {"world", "clip_pretrain", "train_cam", "extract_cams"} & set(jobs)


def _fmt_jobs(jobs: dict[str, int], total: dict[str, int]) -> str:
    """'crf, train_cam (1 of 2)': a rule alone when all its jobs run, else k of n."""
    return ", ".join(
        r if jobs[r] == total[r] else f"{r} ({jobs[r]} of {total[r]})"
        for r in STAGES
        if r in jobs and r != "all"
    )


def rerun_table_markdown() -> str:
    """The table of what a change reruns, rendered from the cases tested above."""
    lines = [
        "| change | rules that run again | rules that stay cached |",
        "|---|---|---|",
    ]
    three = {r: n * 3 // 2 if r in PER_VARIANT else n for r, n in FULL.items()}
    rows = []
    for what, change, jobs in RERUN_CASES:
        if what == "a new CAM variant":  # 3 variants now: counts out of 3
            rows.append((f"{what}: `{NEW_VARIANT}` in `cam.variants`", jobs, three))
        else:
            rows.append((f"{what}: `{change}`", jobs, FULL))
    rows += [(f"an edit of `{module}`", jobs, FULL) for module, jobs in EDIT_CASES]
    for label, jobs, total in rows:
        kept = ", ".join(r for r in STAGES if r not in jobs and r != "all") or "none"
        lines.append(f"| {label} | {_fmt_jobs(jobs, total)} | {kept} |")
    return "\n".join(lines)


def test_rerun_table_matches_the_tests():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = rerun_table_markdown()
    assert table in doc, (
        "docs/ARCHITECTURE.md's rerun table differs from tests/test_workflow.py; paste this:\n"
        + table
    )


def test_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    proc = snakemake(tmp_path, "--dry-run", "--config", "seed=abc", check=False)
    assert proc.returncode != 0
    assert "config: seed = 'abc' is not of type integer" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "--dry-run", "--config", "sede=1", check=False)
    assert proc.returncode != 0
    assert "config: unknown key sede" in proc.stdout + proc.stderr


def test_nested_config_values_from_the_command_line_get_their_types(tmp_path):
    # Snakemake reads `crf={bi_srgb: 3}` with YAML's BaseLoader (every scalar a string);
    # common.smk converts by the schema, and a value that does not parse still fails.
    assert planned_jobs(tmp_path, "--config", "crf={bi_srgb: 3, iters: 2}", "extract={flip: false}")
    # a value with alternatives (world.polysemy: a rate or {background, rate})
    assert planned_jobs(
        tmp_path,
        "--config",
        "world={polysemy: {boat: 0.5, aeroplane: {background: bird, rate: 1}}}",
    )
    proc = snakemake(tmp_path, "--dry-run", "--config", "crf={iters: many}", check=False)
    assert proc.returncode != 0
    assert "config: crf.iters = 'many' is not of type integer" in proc.stdout + proc.stderr


ORACLE_VARIANT = "oracle: {prompts: oracle}"


def test_an_oracle_variant_selects_on_ground_truth(tmp_path):
    # off by default (FULL has no select_prompts_oracle); asked for, it feeds its own train_cam
    jobs = planned_jobs(
        tmp_path, "--config", f"cam={{variants: {{{BASE_VARIANTS}, {ORACLE_VARIANT}}}}}"
    )
    assert jobs["select_prompts_oracle"] == 1 and jobs["select_prompts"] == 1
    assert jobs["train_cam"] == 3 and jobs["eval_cam"] == 3
    proc = snakemake(
        tmp_path,
        "--dry-run",
        "--printshellcmds",
        "--config",
        f"cam={{variants: {{{BASE_VARIANTS}, {ORACLE_VARIANT}}}}}",
    )
    text = proc.stdout + proc.stderr
    assert "results_smoke/prompts/oracle.json" in text
    assert "results_smoke/cam_net/oracle/model.pt" in text


def test_an_oracle_variant_without_ground_truth_is_a_config_error(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "mydata"
    (root / "images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / f"im{i}.png")
    (root / "labels.csv").write_text("image,labels\nim0,cat\nim1,dog\n")
    (root / "classes.yaml").write_text("classes: [cat, dog]\n")
    proc = snakemake(
        tmp_path / "work",
        "--dry-run",
        "--config",
        f"data={{source: folder, root: {root}}}",
        f"clip={{checkpoint: {tmp_path / 'clip.pt'}}}",
        f"cam={{variants: {{{BASE_VARIANTS}, {ORACLE_VARIANT}}}}}",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if "cam.variants.oracle.prompts" in ln]
    assert lines and lines[0].startswith("config: cam.variants.oracle.prompts = 'oracle'"), out[
        -2000:
    ]


def test_smoke_run_writes_the_world_probe(smoke_run):
    r = smoke_run / "results_smoke" / "eval"
    probe = json.loads((r / "clip_zeroshot.json").read_text())["probe"]
    assert probe["split"] == "val" and probe["max_images"] == 200
    assert sum(row["n_images"] for row in probe["per_class"].values()) >= 8  # 8 val images
    assert set(probe["mean_name_minus_best_synonym"]) == {"gt", "cam_like"}
    for row in probe["per_class"].values():
        assert set(row["name_minus_best_synonym"]) == {"gt", "cam_like"}
        for margin in row["margin"].values():
            assert set(margin) == {"gt", "cam_like"}
    assert "| class | token | margin GT | margin CAM-like |" in (r / "probe.md").read_text()
