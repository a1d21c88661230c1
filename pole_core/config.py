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


def _describe(err: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {}))) or "none"
        where = f"{key}." if err.absolute_path else ""
        return f"config: unknown key {where}{extra[0]!s} (allowed here: {allowed})"
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


def _check_semantics(config: dict[str, Any]) -> None:
    """Cross-key rules the schema cannot say."""
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
    th = config["eval"]["cam_bg_thresholds"]
    if th["stop"] < th["start"]:
        raise ConfigError("config: eval.cam_bg_thresholds.stop must not be below start")
    for name in ("resize_long",):
        for group in ("cam", "affinity", "seg"):
            lo, hi = config[group][name]
            if lo > hi:
                raise ConfigError(f"config: {group}.{name} = {[lo, hi]} must be [low, high]")


def variant_settings(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """Resolve one CAM variant: its prompts, adapters flag and full loss weights."""
    cam = config["cam"]
    spec = cam["variants"][variant]
    weights = dict(cam["loss_weights"])
    weights.update(spec.get("loss_weights", {}))
    return {
        "prompts": spec["prompts"],
        "adapters": spec.get("adapters", cam["adapters"]),
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
