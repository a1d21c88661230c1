# Config validation, paths and the small input functions every stage uses.
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from pole_core.config import ConfigError, validate_config, variant_settings, thresholds

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

R = config["results_dir"]
VARIANTS = list(config["cam"]["variants"])
SEG_VARIANT = config["seg"]["variant"]
WORLD = config["data"]["source"] == "world"
MINI_CLIP = config["clip"]["source"] == "mini"

if not WORLD and not Path(config["data"]["root"]).is_dir():
    raise WorkflowError(f"{config['data']['root']}: dataset root not found (config data.root)")

scattergather:
    cams=config["cams"]["shards"],
    crf=config["crf"]["shards"],
    rw=config["random_walk"]["shards"],


wildcard_constraints:
    variant="|".join(VARIANTS),


def data_root():
    """The VOC-layout root: the generated world, or the configured VOCdevkit folder."""
    return f"{R}/data" if WORLD else config["data"]["root"]


def clip_input():
    """The in-pipeline CLIP checkpoint when the mini-CLIP is used, else nothing to wait for."""
    return [f"{R}/clip/model.pt"] if MINI_CLIP else []


def prompts_input(wildcards):
    if variant_settings(config, wildcards.variant)["prompts"] == "selected":
        return [f"{R}/prompts/selected.json"]
    return []


_REPO = Path(workflow.basedir)


def code_version(*packages):
    """Hash of the pole_core modules a rule imports; a change reruns the rule (Snakemake does not track imports)."""
    h = hashlib.sha256()
    for pkg in ("io", "device.py", "config.py", "metrics.py") + packages:
        p = _REPO / "pole_core" / pkg
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(_REPO).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


# The GPU rules declare `resources: gpu=GPU`: one GPU each unless the config runs on the CPU.
# Everything site-specific (GPU count or type, partition, memory, time) is in the profiles:
# profiles/gpu (`resources: gpu=1` runs one GPU rule at a time), profiles/slurm (set-resources).
GPU = 0 if config["device"] == "cpu" else 1


# Under a cluster executor these run on the submit host: they only merge shards or read JSON.
localrules:
    gather_cams,
    pseudo_masks,
    summary,


def final_outputs():
    out = [
        f"{R}/summary.json",
        f"{R}/summary.md",
        f"{R}/figures/overlays.png",
        f"{R}/export/manifest.json",
    ]
    if MINI_CLIP:
        out.append(f"{R}/eval/clip_zeroshot.json")
    return out
