"""Run the real Snakemake CLI on a config in a scratch folder, and read its job plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake_cmd(
    workdir: Path,
    *args: str,
    configfile: str | None = "config/smoke.yaml",
    snakefile: Path | None = None,
) -> list[str]:
    """The snakemake command line: the repo's Snakefile (or `snakefile`), `workdir` as working
    directory; ``configfile=None`` gives no --configfile (the demo config applies)."""
    return [
        *SNAKEMAKE,
        "--snakefile",
        str(snakefile or REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *(["--configfile", str(REPO / configfile)] if configfile else []),
        "--cores",
        "2",
        *args,
    ]


def snakemake(
    workdir: Path,
    *args: str,
    configfile: str | None = "config/smoke.yaml",
    check: bool = True,
    timeout: int = 900,
    snakefile: Path | None = None,
):
    """Run snakemake on the repo's Snakefile (or `snakefile`) with `workdir` as working directory."""
    cmd = snakemake_cmd(workdir, *args, configfile=configfile, snakefile=snakefile)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(
    workdir: Path,
    *args: str,
    configfile: str | None = "config/smoke.yaml",
    snakefile: Path | None = None,
) -> dict[str, int]:
    """The jobs a dry run would execute, as {rule: count} (from the 'Job stats' table)."""
    proc = snakemake(workdir, "--dry-run", *args, configfile=configfile, snakefile=snakefile)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    m = re.search(r"Job stats:\n(.*?)\n\s*total\s+\d+", text, re.S)
    if not m:
        raise AssertionError(f"no job table in dry-run output:\n{text[-3000:]}")
    jobs = {}
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs
