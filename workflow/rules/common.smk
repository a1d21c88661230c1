# Config validation, paths and the small input functions every stage uses.
import functools
import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

import yaml
from snakemake.logging import logger
from snakemake.utils import update_config

from pole_core.config import (
    ConfigError,
    config_diff,
    load_schema,
    paper_defaults,
    selection_file,
    thresholds,
    validate_config,
    variant_settings,
)
from pole_core.cam.sources import CAM_SOURCES
from pole_core.data.registry import has_ground_truth, open_dataset

# config.yaml is the demo run: it applies only when no --configfile is given, so a
# real-data config (config/voc.yaml) starts from the paper defaults of the schema and
# never inherits a demo value. `--configfile config.yaml` asks for the demo explicitly.
if not workflow.overwrite_configfiles:
    with open(Path(workflow.basedir) / "config.yaml") as _f:
        _demo = yaml.safe_load(_f) or {}
    update_config(_demo, dict(config))  # --config values win over the demo's
    config.clear()
    config.update(_demo)

_SCALARS = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def coerce_cli_strings(value, schema):
    """Give `--config` values their schema types: Snakemake parses a nested value such as
    `crf={bi_srgb: 3}` with YAML's BaseLoader, so every scalar in it arrives as a string
    ('3'). A string is replaced only where the schema wants a non-string type and the text
    parses to it ('abc' stays 'abc' and fails validation with its usual one line)."""
    for alt in schema.get("oneOf", []):  # the first alternative that gives the text a type
        if isinstance(value, dict) == (alt.get("type") == "object"):
            value = coerce_cli_strings(value, alt)
            if not isinstance(value, str):
                return value
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = coerce_cli_strings(v, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [coerce_cli_strings(v, schema["items"]) for v in value]
    elif isinstance(value, str):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if "null" in types and value in ("null", "~", "Null", "NULL"):
            return None  # `--config clip='{pretrained: null}'` means no value, not the text
        if types and "string" not in types:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            for t in types:
                py = _SCALARS.get(t)
                if py is None or not isinstance(parsed, py):
                    continue
                if t == "boolean" or not isinstance(parsed, bool):  # True is an int in Python
                    return parsed
    return value


coerce_cli_strings(config, load_schema())
try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

R = config["results_dir"]
# The software of every rule for `--use-conda` (the same pins as pyproject.toml; a test checks).
CONDA_ENV = "../../envs/pole.yaml"

# What this run changes against the paper defaults, at the start of every log; the whole
# effective config is written to <results_dir>/config.yaml (rule effective_config).
_changed = config_diff(paper_defaults(), config)
logger.info(
    f"config: {len(_changed)} keys differ from the paper defaults"
    + (": " + ", ".join(f"{k}={v!r}" for k, (_, v) in _changed.items()) if _changed else "")
)
VARIANTS = list(config["cam"]["variants"])
SEG_VARIANT = config["seg"]["variant"]
# Variants with a CAM network of their own (source trained); the others (clip_es) have none.
NETWORK_VARIANTS = [
    v for v in VARIANTS if CAM_SOURCES[variant_settings(config, v)["source"]].network
]
# Variants whose CAMs POLE's selection masks, each once: baseline -> prompts/selected.json.
SELECT_FROM = list(
    dict.fromkeys(
        s for s in (variant_settings(config, v)["select_from"] for v in VARIANTS) if s is not None
    )
)
WORLD = config["data"]["source"] == "world"
MINI_CLIP = config["clip"]["source"] == "mini"

if not WORLD and not Path(config["data"]["root"]).is_dir():
    raise WorkflowError(f"{config['data']['root']}: dataset root not found (config data.root)")


def _require_file(key, path, what):
    """Stop before the DAG runs when a weights file the run needs is not given or not there."""
    if not path:
        raise WorkflowError(f"config: {key} is not set; {what}")
    if not Path(path).is_file():
        raise WorkflowError(f"config: {key} = {path}: file not found; {what}")


# Real data: a network without its weights file would silently train from random weights.
if not WORLD:
    _cam, _aff, _seg, _clip = (config[k] for k in ("cam", "affinity", "seg", "clip"))
    _RESNET50 = "torchvision's ResNet-50 ImageNet file resnet50-0676ba61.pth (or IRNet's resnet50-19c8e357.pth)"
    if _cam["init"]:
        _require_file("cam.init", _cam["init"], "IRNet's CAM classifier res50_cam.pth")
    elif _cam["backbone"] == "resnet50":
        _require_file("cam.weights", _cam["weights"], f"the CAM network starts from {_RESNET50}")
    if _aff["backbone"] == "resnet50":
        _require_file("affinity.weights", _aff["weights"], f"the boundary network reads {_RESNET50}")
    if _seg["backbone"].startswith("deeplabv3"):
        _depth = _seg["backbone"].removeprefix("deeplabv3_resnet")
        _require_file(
            "seg.weights",
            _seg["weights"],
            f"the segmenter starts from torchvision's ResNet-{_depth} ImageNet file "
            f"({'resnet101-63fe2227.pth' if _depth == '101' else 'resnet50-0676ba61.pth'}) or a DeepLabV3 state dict",
        )
    if _clip["source"] == "open_clip" and _clip["checkpoint"]:
        _require_file(
            "clip.checkpoint",
            _clip["checkpoint"],
            f"the {_clip['model']} weights (OpenAI's .pt file or an open_clip state dict); "
            "or set clip.checkpoint null and clip.pretrained to a tag that open_clip downloads",
        )


def class_names():
    """The dataset's class names, known before anything runs (the world's follow from its size)."""
    if WORLD:
        from pole_core.demo.world import WORLD_CLASSES

        return list(WORLD_CLASSES[: config["world"]["n_classes"]])
    return list(_dataset().class_names)


@functools.cache
def _dataset():
    """The reader of data.source over data.root, opened once at start-up: a folder dataset's
    labels.csv is checked here, so a bad row stops the run before any job starts."""
    from pole_core.data.voc import DataError

    try:
        return open_dataset(config["data"]["source"], config["data"]["root"])
    except DataError as err:
        raise WorkflowError(str(err)) from None


# A typo in the synonym bank would otherwise surface only at select_prompts, after the
# baseline CAM network has been trained.
_unknown = sorted(set(config["prompts"]["synonyms"]) - set(class_names()))
if _unknown:
    raise WorkflowError(
        f"config: prompts.synonyms names unknown class {_unknown[0]!r} "
        f"(classes: {', '.join(class_names())})"
    )

# A dataset without ground truth (a folder without masks/) still gets its pseudo-masks,
# segmenter and export; the score rules (eval_*, figures) leave the DAG.
SCORED = WORLD or has_ground_truth(config["data"]["source"], config["data"]["root"])

# The oracle variant selects its tokens on the ground-truth masks: without them it cannot run.
for _name in VARIANTS:
    if config["cam"]["variants"][_name]["prompts"] == "oracle" and not SCORED:
        raise WorkflowError(
            f"config: cam.variants.{_name}.prompts = 'oracle' selects tokens on ground-truth "
            f"masks, and {config['data']['root']} has none (masks/)"
        )

scattergather:
    cams=config["extract"]["shards"],
    crf=config["crf"]["shards"],
    rw=config["random_walk"]["shards"],


wildcard_constraints:
    variant="|".join(VARIANTS),


def data_root():
    """The VOC-layout root: the generated world, or the configured VOCdevkit folder."""
    return f"{R}/data" if WORLD else config["data"]["root"]


def clip_input():
    """The mini-CLIP's file (trained in the pipeline on the world, or clip.checkpoint on other
    data), else nothing to wait for (open_clip loads its own weights)."""
    if not MINI_CLIP:
        return []
    return [f"{R}/clip/model.pt"] if WORLD else [config["clip"]["checkpoint"]]


def cam_init_input():
    """The CAM classifier both variants start from: IRNet's file (cam.init) or rule
    pretrain_cam (cam.pretrain.epochs > 0); none = straight from cam.weights."""
    if config["cam"]["init"]:
        return [f"{R}/cam_net/init_imported.pt"]
    return [f"{R}/cam_net/init.pt"] if config["cam"]["pretrain"]["epochs"] > 0 else []


def source_variants(source):
    """A wildcard pattern of the variants of one CAM source (pole_core/cam/sources.py), so the
    rules that write cams/{variant}/shard_*.h5 never compete for a file; none matches nothing."""
    names = [v for v in VARIANTS if variant_settings(config, v)["source"] == source]
    return "|".join(re.escape(v) for v in names) or "(?!)"


def affinity_backbone_input(wildcards):
    """What the boundary network reads: its own ImageNet ResNet-50 file, or the CAM network.
    A variant without a CAM network (source clip_es) reads the baseline's."""
    if config["affinity"]["backbone"] == "cam_net":
        own = wildcards.variant in NETWORK_VARIANTS
        return [f"{R}/cam_net/{wildcards.variant if own else 'baseline'}/model.pt"]
    return [config["affinity"]["weights"]]


def prompts_input(wildcards):
    """The per-image token file of a variant: POLE's selection (from the CAMs of its
    select_from variant), or the oracle's (on ground truth)."""
    settings = variant_settings(config, wildcards.variant)
    prompts = settings["prompts"]
    if prompts == "selected":
        return [f"{R}/prompts/{selection_file(settings['select_from'])}"]
    if prompts == "oracle":
        return [f"{R}/prompts/oracle.json"]
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
    effective_config,
    gather_cams,
    pseudo_masks,
    summary,


def final_outputs():
    """Every file of the results contract, so a deleted one (not only a stale one) is rebuilt."""
    out = [
        f"{R}/config.yaml",
        f"{R}/summary.json",
        f"{R}/summary.md",
        f"{R}/export/manifest.json",
        f"{R}/prompts/selected.json",
        f"{R}/seg/model.pt",
    ]
    for v in VARIANTS:
        out += [f"{R}/cams/{v}.h5", f"{R}/pseudo_masks/{v}"]
    out += [f"{R}/cam_net/{v}/model.pt" for v in NETWORK_VARIANTS]
    if SCORED:
        out.append(f"{R}/figures/overlays.png")
    if MINI_CLIP and WORLD:
        out += [f"{R}/eval/clip_zeroshot.json", f"{R}/eval/probe.md"]
    return out


def sbd_input():
    """The train_aug folder built from SBD when data.sbd_root is set, else nothing."""
    return [f"{R}/sbd"] if config["data"].get("sbd_root") is not None else []


# Stage B (prompts.smk): prompts.source file takes the choices from a released selection
# file, so neither the baseline CAMs nor CLIP are inputs.
PROMPTS_FROM_FILE = config["prompts"]["source"] == "file"
if PROMPTS_FROM_FILE and not config["prompts"]["file"]:
    raise WorkflowError("config: prompts.source is 'file' but prompts.file is not set")


def selection_origin(wildcards):
    """The variant whose CAMs a selection masks: baseline for prompts/selected.json, else the
    <from> of prompts/selected_<from>.json (cam.variants.<name>.select_from)."""
    return wildcards.origin[1:] if wildcards.origin else "baseline"


def selection_from_file(wildcards):
    """prompts.source file replaces only the selection from the baseline CAMs."""
    return PROMPTS_FROM_FILE and selection_origin(wildcards) == "baseline"


# "" (baseline) or "_<variant>" for every other select_from variant
SELECTION_ORIGINS = "(?:" + "|".join([""] + [f"_{re.escape(v)}" for v in SELECT_FROM if v != "baseline"]) + ")"
