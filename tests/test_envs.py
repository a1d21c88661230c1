"""envs/pole.yaml (the rules' `conda:` environment) pins what pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib

import yaml


def test_conda_env_pins_equal_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((repo / "envs" / "pole.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = sorted(p for p in pip if not p.startswith("-e"))
    assert pins == sorted(project["dependencies"])
    assert "-e .." in pip  # the project itself, from the repository root
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert re.fullmatch(r"python=3\.11", python) and project["requires-python"].startswith(">=3.11")


def test_every_rule_names_the_conda_env(repo):
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        assert text.count("\nrule ") == text.count("    conda:\n        CONDA_ENV\n"), smk.name
