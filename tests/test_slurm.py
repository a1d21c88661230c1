"""The smoke DAG through SLURM (profiles/slurm): every non-local job is a SLURM job, and the
outputs equal a local run's.

The tests marked `slurm` need a running SLURM cluster: `make test-slurm`
(tests/slurm/run_slurm_test.sh) starts a one-node cluster on this machine and runs them.
Environment (the script sets the last four):

  POLE_SLURM_TARGET     space-separated targets relative to the workdir, e.g.
                        results_smoke/eval/clip_zeroshot.json (default: the whole DAG, rule all)
  POLE_SLURM_LOG        the slurmctld log, where the submissions are counted
  POLE_SLURM_PARTITION  the test cluster's partition
  POLE_SLURM_CPUS       the test node's CPUs and memory: the profile's requests are capped
  POLE_SLURM_MEM_MB     to them (a 2-core test node cannot grant the 8 CPUs of train_cam)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_utils import REPO, SNAKEMAKE, snakemake

PROFILE = REPO / "profiles" / "slurm"
RESULTS = "results_smoke"
TARGETS = os.environ.get("POLE_SLURM_TARGET", "").split()
# site-specific keys that a CPU-only test node cannot grant; dropped from the profile's requests
SITE_ONLY = {"gpu", "gpu_model", "gres", "slurm_extra", "slurm_account", "constraint", "qos"}
# one line per rule that starts: "rule train_cam:" (SLURM job) or "localrule summary:" (submit host)
JOB_LINE = re.compile(r"^\s*(local)?rule (\w+):", re.M)
SUBMIT_LINE = "_slurm_rpc_submit_batch_job"


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _fit(resources: dict) -> dict:
    """The profile's requests, capped to the test node (what a site would edit for it)."""
    cpus = int(os.environ.get("POLE_SLURM_CPUS", os.cpu_count() or 1))
    mem_mb = int(os.environ.get("POLE_SLURM_MEM_MB", 2000))
    partition = os.environ.get("POLE_SLURM_PARTITION")
    out = {}
    for key, value in resources.items():
        if key in SITE_ONLY:
            continue
        if key == "mem_mb":
            value = min(int(value), mem_mb)
        elif key == "cpus_per_task":
            value = min(int(value), cpus)
        elif key == "slurm_partition" and partition:
            value = partition
        out[key] = value
    return out


def _node_overrides() -> list[str]:
    """--default-resources/--set-resources/--set-threads: the profile's, capped to the node."""
    prof = _profile()
    cpus = int(os.environ.get("POLE_SLURM_CPUS", os.cpu_count() or 1))
    default = [f"{k}={v}" for k, v in _fit(prof.get("default-resources", {})).items()]
    per_rule = [
        f"{rule}:{k}={v}"
        for rule, res in prof.get("set-resources", {}).items()
        for k, v in _fit(res).items()
    ]
    threads = [f"{rule}={min(int(n), cpus)}" for rule, n in prof.get("set-threads", {}).items()]
    args = ["--default-resources", *default]
    if per_rule:
        args += ["--set-resources", *per_rule]
    if threads:
        args += ["--set-threads", *threads]
    return args


def _slurmctld_log() -> Path | None:
    path = os.environ.get("POLE_SLURM_LOG")
    return Path(path) if path else None


def _submissions(log: Path | None, start: int) -> int:
    """Batch jobs slurmctld accepted since byte offset `start` of its log."""
    if log is None or not log.exists():
        return -1
    with log.open("rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").count(SUBMIT_LINE)


def _say(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[test_slurm] {line}")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    t0 = time.monotonic()
    proc = snakemake(work, *TARGETS, timeout=3600)
    return work, time.monotonic() - t0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, local_run):
    """The same targets through profiles/slurm, invoked as docs/CLUSTER.md says (after the
    local run: the machine's cores are shared)."""
    work = tmp_path_factory.mktemp("slurm")
    log = _slurmctld_log()
    start = log.stat().st_size if log is not None and log.exists() else 0
    cmd = [
        *SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config" / "smoke.yaml"),
        "--profile",
        str(PROFILE),
        # without it, profiles/default (cores: all) would cap every job's threads at the
        # submit host's core count
        "--workflow-profile",
        "none",
        *_node_overrides(),
        # keep one log per SLURM job (the plugin deletes the successful ones by default)
        "--slurm-keep-successful-logs",
        # the test cluster answers at once; the plugin's default first wait is 40 s
        "--slurm-init-seconds-before-status-checks",
        "2",
        *TARGETS,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=3600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    elapsed = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake through SLURM failed:\n{output[-8000:]}"
    return work, elapsed, output, _submissions(log, start)


@pytest.mark.slurm
def test_cluster_runs_a_batch_job(tmp_path):
    assert shutil.which("sbatch"), "no sbatch: start the cluster with `make test-slurm`"
    out = subprocess.run(
        ["sbatch", "--parsable", "-D", str(tmp_path), "-o", "job.out", "--wrap", "echo ok"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    state = ""
    for _ in range(120):
        state = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    assert state == "COMPLETED", f"job {job}: {state or 'gone'}"
    assert (tmp_path / "job.out").read_text().strip() == "ok"


@pytest.mark.slurm
def test_every_non_local_job_went_through_slurm(slurm_run, capsys):
    work, _, output, submitted = slurm_run
    jobs = JOB_LINE.findall(output)
    remote = sorted(rule for local, rule in jobs if not local)
    local = sorted(rule for local, rule in jobs if local)
    assert remote, f"no SLURM jobs in the output:\n{output[-3000:]}"
    assert not {"all", "gather_cams", "pseudo_masks", "summary"} & set(remote)
    if not TARGETS:
        assert "all" in local
    logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    log_rules = sorted(p.relative_to(work / ".snakemake" / "slurm_logs").parts[0] for p in logs)
    _say(
        capsys,
        f"SLURM jobs submitted: {submitted} (slurmctld log), {len(logs)} SLURM job logs, "
        f"{len(remote)} non-local Snakemake jobs, {len(local)} local jobs ({', '.join(sorted(set(local)))})",
    )
    assert len(logs) >= len(remote)
    assert sorted(r.removeprefix("rule_") for r in log_rules) == remote
    if submitted >= 0:  # the slurmctld log is known when run by run_slurm_test.sh
        assert submitted >= len(remote)
    # the sharded rules: one SLURM job per shard
    for rule in ("extract_cams", "crf", "random_walk"):
        if rule in remote:
            assert remote.count(rule) >= 2, rule


def _miou(obj, path=""):
    """Every number under a key containing 'miou', by its path in the JSON document."""
    found = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = f"{path}/{key}"
            if "miou" in str(key).lower() and isinstance(value, int | float):
                found[sub] = value
            else:
                found.update(_miou(value, sub))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found.update(_miou(value, f"{path}/{i}"))
    return found


def _png_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


@pytest.mark.slurm
def test_outputs_equal_the_local_run(local_run, slurm_run, capsys):
    local_dir, local_s, _ = local_run
    slurm_dir, slurm_s, _, submitted = slurm_run
    _say(
        capsys,
        f"wall time: local {local_s:.1f} s, SLURM {slurm_s:.1f} s "
        f"(target: {' '.join(TARGETS) or 'all'}; {submitted} SLURM jobs)",
    )
    evals_local = sorted(p.name for p in (local_dir / RESULTS / "eval").glob("*.json"))
    evals_slurm = sorted(p.name for p in (slurm_dir / RESULTS / "eval").glob("*.json"))
    assert evals_local == evals_slurm
    for name in evals_local:
        a = json.loads((local_dir / RESULTS / "eval" / name).read_text())
        b = json.loads((slurm_dir / RESULTS / "eval" / name).read_text())
        if _miou(a):
            assert _miou(a) == _miou(b), name
        else:  # no mIoU in it (the CLIP zero-shot check): the whole document
            assert a == b, name
    masks_local = _png_digests(local_dir / RESULTS / "pseudo_masks")
    masks_slurm = _png_digests(slurm_dir / RESULTS / "pseudo_masks")
    assert masks_local == masks_slurm
    assert evals_local or masks_local, "the target makes no eval JSON or pseudo-mask to compare"
    if not TARGETS:  # the whole DAG makes both
        assert evals_local and masks_local


def test_slurm_profile_threads_match_cpus():
    """Every rule given threads in profiles/slurm asks SLURM for as many CPUs."""
    prof = _profile()
    assert prof["executor"] == "slurm"
    per_rule = prof.get("set-resources", {})
    for rule, n in prof.get("set-threads", {}).items():
        assert per_rule.get(rule, {}).get("cpus_per_task") == n, rule


def test_slurm_profile_sets_threads_of_every_all_cores_rule():
    """Rules with `threads: workflow.cores` would get the profile's `cores` (a cap) as threads."""
    all_cores, rule = set(), None
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for line in smk.read_text().splitlines():
            m = re.match(r"rule (\w+):", line)
            rule = m.group(1) if m else rule
            if re.match(r"\s+threads:\s*workflow\.cores\b", line):
                all_cores.add(rule)
    assert all_cores, "no rule with threads: workflow.cores found"
    assert all_cores <= set(_profile().get("set-threads", {}))
