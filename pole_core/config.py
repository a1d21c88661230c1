"""Config validation against the JSON schema, with paper defaults filled in.

The workflow calls :func:`validate_config` before building the DAG. A bad value
stops the run with one line that names the key (``cam.epochs``) and what was
expected, instead of jsonschema's multi-line dump.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that does not fit the schema; the message is one line."""


def load_schema(path: str | os.PathLike = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _with_defaults(validator_cls):
    """A validator class that fills in ``default`` values while it validates."""
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


# Config groups that were renamed so that each names its stage: old key -> new key.
RENAMED_KEYS: dict[str, str] = {
    "cams": "extract",
    "random_walk.crf": "random_walk.final_crf",
}


def _describe(err: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {}))) or "none"
        where = f"{key}." if err.absolute_path else ""
        full = f"{where}{extra[0]!s}"
        if full in RENAMED_KEYS:
            return f"config: {full} is now called {RENAMED_KEYS[full]}"
        return f"config: unknown key {full} (allowed here: {allowed})"
    if err.validator == "type":
        return f"config: {key} = {err.instance!r} is not of type {err.validator_value}"
    if err.validator == "enum":
        return f"config: {key} = {err.instance!r} must be one of {err.validator_value}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"config: {key} = {err.instance!r} is out of range ({err.validator} {err.validator_value})"
    msg = err.message.splitlines()[0]
    return f"config: {key}: {msg}"


def validate_config(config: dict[str, Any], schema: dict | None = None) -> dict[str, Any]:
    """Validate ``config`` in place, fill in defaults, and return it; raise ConfigError on the first problem."""
    schema = schema if schema is not None else load_schema()
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_semantics(config)
    return config


def paper_defaults(schema: dict | None = None) -> dict[str, Any]:
    """Every key at its schema default: the paper's settings, before any config file."""
    schema = schema if schema is not None else load_schema()
    config: dict[str, Any] = {}
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    for _ in cls(schema).iter_errors(config):  # filling defaults is a side effect of validating
        pass
    return config


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"crf": {"fg_thresh": 0.3}}`` -> ``{"crf.fg_thresh": 0.3}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and key != "variants":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(base: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs: ``{key: (base, other)}``.

    A missing key reads as None, so the comparison is symmetric in what it reports.
    """
    a, b = flatten(base), flatten(other)
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


# Keys whose choices are the entries of a registry, so that a new backbone or dataset is
# one module plus one registry entry (the schema lists no enum for them).
REGISTRIES: dict[str, str] = {
    "data.source": "pole_core.data.registry:DATASETS",
    "cam.backbone": "pole_core.cam.network:BACKBONES",
    "seg.backbone": "pole_core.seg.network:BACKBONES",
}


# The same for keys of each CAM variant (cam.variants.<name>.<key>), with their default.
VARIANT_REGISTRIES: dict[str, tuple[str, str]] = {
    "source": ("pole_core.cam.sources:CAM_SOURCES", "trained"),
}


def registry(key: str) -> dict[str, Any]:
    """The registry behind a config key of :data:`REGISTRIES` or :data:`VARIANT_REGISTRIES`."""
    import importlib

    path = REGISTRIES[key] if key in REGISTRIES else VARIANT_REGISTRIES[key][0]
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _check_semantics(config: dict[str, Any]) -> None:
    """Cross-key rules the schema cannot say."""
    for key in REGISTRIES:
        group, name = key.split(".")
        value, choices = config[group][name], registry(key)
        if value not in choices:
            raise ConfigError(
                f"config: {key} = {value!r} is not one of {', '.join(map(repr, choices))}"
            )
    data = config["data"]
    if data["source"] != "world" and not data.get("root"):
        raise ConfigError(
            f"config: data.root must name the dataset folder when data.source is {data['source']}"
        )
    clip = config["clip"]
    if clip["source"] == "mini" and data["source"] != "world" and not clip.get("checkpoint"):
        raise ConfigError(
            "config: clip.source mini is trained on the demo world's captions: use data.source "
            "world, or name a trained mini-CLIP file in clip.checkpoint"
        )
    variants = config["cam"]["variants"]
    if config["seg"]["variant"] not in variants:
        raise ConfigError(
            f"config: seg.variant = {config['seg']['variant']!r} is not one of cam.variants ({', '.join(variants)})"
        )
    _check_variants(config)
    th = config["eval"]["cam_bg_thresholds"]
    if th["stop"] < th["start"]:
        raise ConfigError("config: eval.cam_bg_thresholds.stop must not be below start")
    for name in ("resize_long",):
        for group in ("cam", "affinity", "seg"):
            lo, hi = config[group][name]
            if lo > hi:
                raise ConfigError(f"config: {group}.{name} = {[lo, hi]} must be [low, high]")


def variant_source(config: dict[str, Any], variant: str) -> str:
    """What makes a variant's CAMs: a key of pole_core.cam.sources.CAM_SOURCES."""
    return config["cam"]["variants"][variant].get("source", VARIANT_REGISTRIES["source"][1])


def select_from(config: dict[str, Any], variant: str) -> str | None:
    """The variant whose CAMs POLE's selection masks for ``variant`` (None unless prompts selected).

    Unset: baseline, except for a clip_es variant, which selects from the first clip_es
    variant with prompts names (POLE on CLIP-ES refines CLIP-ES's own masks); None when
    there is no such variant (:func:`validate_config` reports it).
    """
    variants = config["cam"]["variants"]
    spec = variants[variant]
    if spec["prompts"] != "selected":
        return None
    if "select_from" in spec:
        return spec["select_from"]
    source = variant_source(config, variant)
    if source == "trained":
        return "baseline"
    same = [v for v in variants if variant_source(config, v) == source]
    return next((v for v in same if variants[v]["prompts"] == "names"), None)


def selection_file(source_variant: str) -> str:
    """The selection file of a source variant under <results_dir>/prompts/ (baseline: selected.json)."""
    return "selected.json" if source_variant == "baseline" else f"selected_{source_variant}.json"


def _check_variants(config: dict[str, Any]) -> None:
    """Each variant's source is registered, its selection source exists, its boundary net has a backbone."""
    variants = config["cam"]["variants"]
    for name, spec in variants.items():
        for key, (_, default) in VARIANT_REGISTRIES.items():
            value, choices = spec.get(key, default), registry(key)
            if value not in choices:
                raise ConfigError(
                    f"config: cam.variants.{name}.{key} = {value!r} is not one of "
                    f"{', '.join(map(repr, choices))}"
                )
        where = f"cam.variants.{name}.select_from"
        if "select_from" in spec and spec["prompts"] != "selected":
            raise ConfigError(f"config: {where} applies only to prompts: selected")
        origin = select_from(config, name)
        if spec["prompts"] == "selected" and origin is None:
            raise ConfigError(
                f"config: cam.variants.{name} (source {variant_source(config, name)}, prompts "
                f"selected) has no variant of its source with prompts names to select from; "
                f"add one or set {where}"
            )
        if origin is not None and origin not in variants:
            raise ConfigError(
                f"config: {where} = {origin!r} is not one of cam.variants ({', '.join(variants)})"
            )
        if origin is not None and variants[origin]["prompts"] != "names":
            raise ConfigError(
                f"config: {where} = {origin!r} has prompts {variants[origin]['prompts']!r}; "
                "POLE selects from the CAMs of a variant with prompts names"
            )
    baseline_net = registry("source")[variant_source(config, "baseline")].network
    if config["affinity"]["backbone"] == "cam_net" and not baseline_net:
        raise ConfigError(
            "config: affinity.backbone cam_net reads the baseline's CAM network for variants "
            "without one, so cam.variants.baseline.source must be trained (or set "
            "affinity.backbone resnet50)"
        )


def variant_settings(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """Resolve one CAM variant: its source, prompts (and where they are selected from),
    adapters flag, adapter learning rate and full loss weights."""
    cam = config["cam"]
    spec = cam["variants"][variant]
    weights = dict(cam["loss_weights"])
    weights.update(spec.get("loss_weights", {}))
    return {
        "source": variant_source(config, variant),
        "prompts": spec["prompts"],
        "select_from": select_from(config, variant),
        "adapters": spec.get("adapters", cam["adapters"]),
        "adapter_lr": spec.get("adapter_lr", cam["adapter_lr"]),
        "loss_weights": weights,
    }


def thresholds(config: dict[str, Any]) -> list[float]:
    """The CAM background-threshold sweep as a list (rounded to avoid float drift)."""
    th = config["eval"]["cam_bg_thresholds"]
    n = int(round((th["stop"] - th["start"]) / th["step"])) + 1
    return [round(th["start"] + i * th["step"], 6) for i in range(n)]


def schema_markdown(schema: dict | None = None) -> str:
    """The configuration reference as Markdown (docs/CONFIG.md is generated from it)."""
    schema = schema if schema is not None else load_schema()
    lines = [
        "# Configuration reference",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `python -m pole_core.config`; "
        "defaults are the paper's (PASCAL VOC 2012).",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]

    def walk(node: dict, prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            typ = sub.get("type", "enum" if "enum" in sub else "")
            if "enum" in sub:
                typ = " \\| ".join(str(v) for v in sub["enum"])
            elif isinstance(typ, list):
                typ = " \\| ".join(typ)
            default = sub.get("default", "")
            if sub.get("type") == "object" and "properties" in sub:
                default = ""
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(
                f"| `{key}` | {typ} | `{default}` | {desc} |"
                if default != ""
                else f"| `{key}` | {typ} | | {desc} |"
            )
            if sub.get("type") == "object":
                walk(sub, key + ".")

    walk(schema, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/CONFIG.md")
    out.write_text(schema_markdown())
    print(f"wrote {out}")
